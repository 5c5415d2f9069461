//! Hypervisor commands held back until the image their VM needs is in the
//! store: a VM placed on a host without its image is pending while the
//! image comes from peers, and nothing else waits for it. Later commands
//! for the same VM queue behind, so a delete never overtakes the define
//! it must undo.

use super::Images;
use super::transfer::Exchange;
use locus_core::hypervisor::{HvCommand, OpId};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The held commands.
#[derive(Debug)]
pub struct Waiting {
    exchange: Exchange,
    images: Arc<Images>,
    queues: HashMap<String, VecDeque<(OpId, HvCommand)>>,
    arrived: mpsc::UnboundedSender<String>,
}

/// The image a command needs in the store before it can run.
fn needs(cmd: &HvCommand) -> Option<&str> {
    match cmd {
        HvCommand::Define { spec, .. } | HvCommand::Receive { spec, .. } => spec.image.as_deref(),
        _ => None,
    }
}

impl Waiting {
    /// Held commands, and where the VMs whose images arrived are named.
    pub fn new(exchange: Exchange, images: Arc<Images>) -> (Waiting, mpsc::UnboundedReceiver<String>) {
        let (arrived, rx) = mpsc::unbounded_channel();
        (Waiting { exchange, images, queues: HashMap::new(), arrived }, rx)
    }

    /// Holds `cmd` if its VM waits for an image; otherwise gives it back
    /// to be carried out now.
    pub fn hold(&mut self, op: OpId, cmd: HvCommand) -> Option<(OpId, HvCommand)> {
        let vm = cmd.vm().to_owned();
        if let Some(queue) = self.queues.get_mut(&vm) {
            queue.push_back((op, cmd));
            return None;
        }
        let Some(image) = needs(&cmd).filter(|i| self.images.resolve(i).is_err()).map(str::to_owned) else {
            return Some((op, cmd));
        };
        tracing::info!(%vm, %image, "the VM waits for its image to come from peers");
        self.queues.insert(vm.clone(), VecDeque::from([(op, cmd)]));
        let exchange = self.exchange.clone();
        let arrived = self.arrived.clone();
        tokio::spawn(async move {
            match exchange.ensure(&image).await {
                Ok(()) => tracing::info!(%vm, %image, "the VM's image is here"),
                // The define goes on and fails with the store's reason.
                Err(e) => tracing::warn!(%vm, %image, error = %e, "the VM's image could not be fetched"),
            }
            let _ = arrived.send(vm);
        });
        None
    }

    /// The commands held for `vm`, in order, to carry out now.
    pub fn release(&mut self, vm: &str) -> VecDeque<(OpId, HvCommand)> {
        self.queues.remove(vm).unwrap_or_default()
    }

    /// VMs waiting for their images.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Whether no VM waits.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }
}
