//! `locus agent`: the tokio shell around the node.
//!
//! One task owns the [`Node`] and loops: drain its outputs (persist the
//! round's intent changes in one transaction, then send hypervisor commands
//! and replies), then wait for the next input — an API call, a hypervisor
//! report, a policy's answer, the node's deadline or shutdown — taking a
//! bounded batch of what is already queued. libvirt runs on its own thread,
//! policies on worker threads of their own ([`crate::deciders`]); the API
//! servers are tasks that talk to the core task over a channel.

use crate::api::{self, AppState, Call};
use crate::config::{AgentConfig, LogFormat};
use crate::deciders::{Answered, Deciders};
use crate::images::Images;
use crate::images::transfer::Exchange;
use crate::images::waiting::Waiting;
use crate::libvirt::{self, FromHypervisor, ToHypervisor};
use crate::metrics::Telemetry;
use crate::overlay::{self, FromOverlay, ToOverlay};
use crate::policies::Policies;
use crate::records::Records;
use crate::reserve::Reserve;
use crate::store::Store;
use anyhow::{Context, Result, bail};
use locus_core::cluster::PeerId as CorePeer;
use locus_core::intent::Change;
use locus_core::node::{ApiError, Input, Node, Output, Reply, ReqId};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Inputs taken per wake-up before the outputs are drained again.
const BATCH: usize = 64;

/// How often a spent reserve is tried again.
const RESERVE_RECHECK: Duration = Duration::from_secs(2);

/// One round of the node's outputs, as the shell carries them out.
#[derive(Default)]
struct Round {
    changes: Vec<Change>,
    commands: Vec<(locus_core::hypervisor::OpId, locus_core::hypervisor::HvCommand)>,
    answers: Vec<(ReqId, Result<Reply, ApiError>)>,
    overlay: Vec<ToOverlay>,
    records: Vec<locus_core::record::Record>,
}

/// Sets up logging as configured.
pub fn init_logging(config: &AgentConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: AgentConfig) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("locus-agent")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: AgentConfig) -> Result<()> {
    prepare_state_dir(&config.state_dir)?;
    raise_fd_limit();
    // Taken before the store grows, so that it is there when the disk fills.
    let reserve = Reserve::new(&config.state_dir.join("reserve"), config.reserve_mib << 20);
    let store = Arc::new(Store::open(&config.state_dir.join("state.redb"))?);
    let telemetry = Telemetry::new(&config.metrics);
    let records = Arc::new(Records::open(store.clone(), config.records.keep)?);
    let intents = store.intents()?;
    let policies = Arc::new(Policies::start(&config.policies, store.clone())?);
    let images = Arc::new(Images::open(&config.images_dir(), config.images.clone())?);
    let known = intents.iter().map(|i| i.spec.name.clone()).collect();
    match images.sweep(&known) {
        Ok(swept) if !swept.is_empty() => {
            tracing::warn!(?swept, "removed the disks of VMs that no longer exist")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not sweep the disks of VMs that no longer exist"),
    }
    let keypair = overlay::identity::load_or_create(&config.state_dir.join("node.key"))?;
    let peer = keypair.public().to_peer_id();
    let node = Node::new(config.node(CorePeer::from(peer.to_string())), intents)?;
    tracing::info!(
        host = %config.host.name,
        %peer,
        pop = %config.pop.name,
        vms = node.intents().count(),
        libvirt = %config.libvirt_uri,
        "agent starting"
    );

    let (hv_events, hv_rx) = mpsc::unbounded_channel();
    let (hv_tx, hv_thread) = libvirt::spawn(
        libvirt::Settings {
            uri: config.libvirt_uri.clone(),
            owner: config.host.name.clone(),
            sample_interval: Duration::from_millis(config.sample_interval_ms),
            images: images.clone(),
            migration_uri: config.migration_uri.clone(),
            telemetry: telemetry.clone(),
        },
        hv_events,
    )
    .context("starting the libvirt thread")?;

    let cancel = CancellationToken::new();
    let (ov_events, ov_rx) = mpsc::unbounded_channel();
    let (policy_events, policy_rx) = mpsc::unbounded_channel();
    let (image_asks, image_rx) = mpsc::unbounded_channel();
    let (record_asks, record_rx) = mpsc::unbounded_channel();
    let (ov_tx, ov_task) = overlay::spawn(
        overlay_settings(&config, keypair.clone(), telemetry.clone())?,
        ov_events,
        policy_events,
        image_asks,
        record_asks,
        cancel.clone(),
    )?;
    let records_task = crate::records::serve(records.clone(), ov_tx.clone(), record_rx, cancel.clone());
    let exchange = Exchange::start(
        (config.host.name.clone(), config.pop.name.clone()),
        images.clone(),
        ov_tx.clone(),
        image_rx,
        cancel.clone(),
    );
    let (waiting, arrived) = Waiting::new(exchange.clone(), images.clone());
    let images_changed = images.subscribe();
    let held = images.clone();
    let shadows = Arc::new(crate::rollout::shadow::Shadows::default());
    let (rollouts, rollout_task) = crate::rollout::spawn(
        crate::rollout::Settings {
            peer: CorePeer::from(peer.to_string()),
            host: config.host.name.clone(),
            pop: config.pop.name.clone(),
            policies: policies.clone(),
            store: store.clone(),
            overlay: ov_tx.clone(),
            shadows: shadows.clone(),
            keypair,
        },
        policy_rx,
        cancel.clone(),
    );

    let (answers_tx, answers_rx) = mpsc::unbounded_channel();
    let workers = config.policies.worker_count();
    let deciding = crate::deciders::Deciding {
        placement: policies.placement.clone(),
        migration: policies.migration.clone(),
        consolidation: policies.consolidation.clone(),
        shadows,
    };
    let deciders = Deciders::spawn(workers, deciding, answers_tx, telemetry.clone())
        .context("starting the policy workers")?;
    tracing::info!(workers, "policy workers started");

    let (core_tx, core_rx) = mpsc::channel(1024);
    let state = AppState {
        core: core_tx,
        policies: policies.clone(),
        store: store.clone(),
        images,
        exchange,
        uploads: Arc::new(tokio::sync::Semaphore::new(api::policies::MAX_UPLOADS)),
        overlay: ov_tx.clone(),
        rollouts,
        telemetry: telemetry.clone(),
        records: records.clone(),
    };
    let tracker = TaskTracker::new();
    let socket = config.socket_path();
    let unix = bind_unix(&socket)?;
    let router = api::router(state);
    tracker.spawn(api::serve::serve(unix, router.clone(), config.api.clone(), None, cancel.clone()));
    if let Some(addr) = config.listen {
        let token = config.token()?.context("listen needs a token")?;
        let tls = config.tls.as_ref().map(api::tls::acceptor).transpose()?;
        let tcp = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        if tls.is_some() {
            tracing::info!(%addr, "API on TCP with TLS (bearer token required)");
        } else {
            tracing::warn!(%addr, "API on TCP without TLS: the bearer token crosses the network in clear (set [tls])");
        }
        let router = api::with_token(router, token);
        tracker.spawn(api::serve::serve(tcp, router, config.api.clone(), tls, cancel.clone()));
    }
    tracing::info!(socket = %socket.display(), "API on unix socket");
    tracker.spawn(signals(cancel.clone()));
    tracker.close();

    let core = Core {
        node,
        store,
        hv: hv_tx.clone(),
        overlay: ov_tx,
        deciders,
        replies: HashMap::new(),
        next_req: 0,
        reserve,
        energy: config.energy.clone(),
        waiting,
        images: held,
        telemetry,
        records: records.clone(),
    };
    let inboxes =
        Inboxes { api: core_rx, hv: hv_rx, peers: ov_rx, answers: answers_rx, arrived, images_changed };
    let result = core.run(inboxes, cancel.clone()).await;
    tokio::task::block_in_place(|| records.flush());
    cancel.cancel();
    tracker.wait().await;
    let _ = rollout_task.await;
    let _ = records_task.await;
    let _ = ov_task.await;
    let _ = hv_tx.send(ToHypervisor::Stop);
    let _ = tokio::task::spawn_blocking(move || hv_thread.join()).await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("agent stopped");
    result
}

/// The task that owns the node.
struct Core {
    node: Node,
    store: Arc<Store>,
    hv: std::sync::mpsc::Sender<ToHypervisor>,
    overlay: mpsc::UnboundedSender<ToOverlay>,
    deciders: Deciders,
    replies: HashMap<ReqId, oneshot::Sender<Result<Reply, ApiError>>>,
    next_req: u64,
    /// Space kept for recording stops and deletes on a full disk; while it
    /// is spent, creates and starts wait for room.
    reserve: Reserve,
    /// The standby and wake commands.
    energy: crate::config::EnergyConfig,
    /// Commands of VMs whose images are on their way.
    waiting: Waiting,
    /// The image store, whose holdings placement sees.
    images: Arc<Images>,
    /// Where decisions, events and commits are counted.
    telemetry: Telemetry,
    /// The decision records this agent keeps.
    records: Arc<Records>,
}

/// What wakes the core task.
struct Inboxes {
    api: mpsc::Receiver<Call>,
    hv: mpsc::UnboundedReceiver<FromHypervisor>,
    peers: mpsc::UnboundedReceiver<FromOverlay>,
    answers: mpsc::UnboundedReceiver<Vec<Answered>>,
    /// VMs whose images arrived.
    arrived: mpsc::UnboundedReceiver<String>,
    /// The image store changed.
    images_changed: tokio::sync::watch::Receiver<u64>,
}

impl Core {
    async fn run(mut self, inboxes: Inboxes, cancel: CancellationToken) -> Result<()> {
        let Inboxes { mut api, mut hv, mut peers, mut answers, mut arrived, mut images_changed } = inboxes;
        let mut stopping = false;
        self.images_changed();
        let mut recheck = tokio::time::interval(RESERVE_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !self.reserve.held() {
            self.storage_changed();
        }
        loop {
            let (deadline, closed) = self.drain()?;
            if closed {
                return Ok(());
            }
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if !stopping => {
                    stopping = true;
                    tracing::info!("shutting down: finishing what is in flight");
                    self.node.handle_input(Input::Shutdown(Instant::now()));
                }
                Some(event) = hv.recv() => batch(event, || hv.try_recv().ok(), |e| self.hypervisor(e)),
                Some(event) = peers.recv() => batch(event, || peers.try_recv().ok(), |e| self.peer(e)),
                Some(call) = api.recv() => batch(call, || api.try_recv().ok(), |c| self.call(c)),
                Some(answered) = answers.recv() => {
                    batch(answered, || answers.try_recv().ok(), |list| list.into_iter().for_each(|a| self.decided(a)))
                }
                Ok(()) = images_changed.changed() => self.images_changed(),
                Some(vm) = arrived.recv() => {
                    for (op, cmd) in self.waiting.release(&vm) {
                        if self.hv.send(ToHypervisor::Run(op, cmd)).is_err() {
                            bail!("the libvirt thread has stopped");
                        }
                    }
                    self.waiting_changed();
                }
                _ = sleep => self.node.handle_input(Input::Timeout(Instant::now())),
                _ = recheck.tick(), if !self.reserve.held() => {
                    if tokio::task::block_in_place(|| self.reserve.take()).is_ok() {
                        self.storage_changed();
                    }
                }
            }
        }
    }

    /// Counts the VMs waiting for their images.
    fn waiting_changed(&self) {
        if let Some(m) = self.telemetry.get() {
            m.images_waiting(self.waiting.len());
        }
    }

    /// Tells the node what the image store holds now.
    fn images_changed(&mut self) {
        let keys = tokio::task::block_in_place(|| self.images.keys());
        self.node.handle_input(Input::Images { now: Instant::now(), keys });
    }

    /// Carries out everything the node asked for; returns its next deadline
    /// and whether it has closed.
    fn drain(&mut self) -> Result<(Option<Instant>, bool)> {
        loop {
            let (round, deadline, closed) = self.collect();
            if self.carry_out(round)? {
                return Ok((deadline, closed));
            }
            // The node answered the undone requests: carry that out too.
        }
    }

    /// One round of the node's outputs.
    fn collect(&mut self) -> (Round, Option<Instant>, bool) {
        let mut round = Round::default();
        let mut closed = false;
        let deadline = loop {
            match self.node.poll_output() {
                Output::Persist(change) => round.changes.push(change),
                Output::Hypervisor { op, cmd } => round.commands.push((op, cmd)),
                Output::Reply { req, reply } => round.answers.push((req, reply)),
                Output::Decide { id, question } => self.deciders.ask(id, question),
                Output::Plan { id, question } => self.deciders.plan(id, question),
                Output::Event(e) => {
                    if let Some(m) = self.telemetry.get() {
                        m.event(&e);
                    }
                    tracing::info!("{}", crate::control::clean(&e.to_string()))
                }
                Output::Record(r) => round.records.push(*r),
                Output::Gossip { topic, msg } => round.overlay.push(ToOverlay::Gossip(topic, msg)),
                Output::Request { id, to, req } => round.overlay.push(ToOverlay::Request(id, to, req)),
                Output::Respond { id, resp } => round.overlay.push(ToOverlay::Respond(id, resp)),
                Output::Dial(peer) => round.overlay.push(ToOverlay::Dial(peer)),
                Output::Announce { vm, at } => round.overlay.push(ToOverlay::Announce(vm, at)),
                Output::Locate(vm) => round.overlay.push(ToOverlay::Locate(vm)),
                Output::Power { standby } => self.power(standby),
                Output::Closed => closed = true,
                Output::Timeout(at) => break at,
            }
        };
        (round, deadline, closed)
    }

    /// Makes a round's intent durable, then acts on it. When the intent
    /// cannot be written, nothing is done for the VMs it was about. The
    /// node is told how the write went, and false is returned so what it
    /// says to that is carried out too.
    fn carry_out(&mut self, mut round: Round) -> Result<bool> {
        let mut settled = true;
        // Decision records go first, without durability of their own: the
        // round's intent commit below makes them durable with it.
        if let Some(m) = self.telemetry.get() {
            round.records.iter().for_each(|r| m.decided(r));
        }
        self.records.add(std::mem::take(&mut round.records));
        // Most wake-ups (gossip, pings, samples) change no intent and need
        // not leave the runtime.
        if !round.changes.is_empty() {
            // Either way the node has more to say (answers that waited for
            // the write, or undone requests): one more round is drained.
            settled = false;
            match tokio::task::block_in_place(|| self.record(&round.changes)) {
                Ok(()) => self.node.handle_input(Input::Recorded),
                Err(e) => {
                    let no_space = crate::store::is_no_space(&e);
                    tracing::error!(error = %format!("{e:#}"), no_space, "intent not recorded: its changes are undone");
                    let unrecorded: std::collections::HashSet<String> = round
                        .changes
                        .iter()
                        .filter_map(|c| match c {
                            Change::Put(i) => Some(i.spec.name.clone()),
                            Change::Remove(_) => None,
                        })
                        .collect();
                    round.commands.retain(|(_, cmd)| !unrecorded.contains(cmd.vm()));
                    round
                        .overlay
                        .retain(|m| !matches!(m, ToOverlay::Announce(vm, _) if unrecorded.contains(vm)));
                    let reason = if no_space {
                        "the agent's state directory is full".to_owned()
                    } else {
                        format!("the intent store failed: {e}")
                    };
                    self.node.handle_input(Input::NotRecorded { now: Instant::now(), reason, no_space });
                }
            }
        }
        for (op, cmd) in round.commands.into_iter().filter_map(|(op, cmd)| self.waiting.hold(op, cmd)) {
            if self.hv.send(ToHypervisor::Run(op, cmd)).is_err() {
                bail!("the libvirt thread has stopped");
            }
        }
        self.waiting_changed();
        for message in round.overlay {
            // The overlay task is gone only when the agent is stopping.
            let _ = self.overlay.send(message);
        }
        for (req, reply) in round.answers {
            if let Some(tx) = self.replies.remove(&req) {
                let _ = tx.send(reply);
            }
        }
        Ok(settled)
    }

    /// Writes a round's changes. On a full disk the reserve is given up
    /// and the write tried once more: stops and deletes go on, and the node
    /// refuses what would need more room until the reserve is back.
    fn record(&mut self, changes: &[Change]) -> Result<()> {
        let started = Instant::now();
        let result = self.write(changes);
        if let Some(m) = self.telemetry.get() {
            m.committed(result.is_ok(), started.elapsed());
        }
        result
    }

    fn write(&mut self, changes: &[Change]) -> Result<()> {
        match self.store.apply(changes) {
            Err(e) if crate::store::is_no_space(&e) && self.reserve.held() => {
                self.reserve.release();
                self.storage_changed();
                self.store.apply(changes).context("writing intent after releasing the reserve")
            }
            other => other,
        }
    }

    /// Says that the reserve was given up (the state directory is full) or
    /// taken back; called once per change.
    fn storage_changed(&mut self) {
        let low = !self.reserve.held();
        if low {
            tracing::error!(
                "the state directory is full: creates and starts are refused (507) until there is room; stops and deletes use the reserve"
            );
        } else {
            tracing::info!("the state directory has room again: creates and starts are accepted");
        }
        self.node.handle_input(Input::Storage { now: Instant::now(), low });
    }

    fn call(&mut self, call: Call) {
        let req = ReqId(self.next_req);
        self.next_req += 1;
        self.replies.insert(req, call.reply);
        self.node.handle_input(Input::Api { now: Instant::now(), req, cmd: call.cmd });
    }

    /// Runs the configured standby or wake command, off the core task.
    fn power(&self, standby: bool) {
        let (what, argv) = if standby {
            ("standby", self.energy.standby_command.clone())
        } else {
            ("wake", self.energy.wake_command.clone())
        };
        let Some((program, args)) = argv.split_first().map(|(p, a)| (p.clone(), a.to_vec())) else {
            return;
        };
        let timeout = Duration::from_millis(self.energy.command_timeout_ms);
        tokio::spawn(async move {
            let run = tokio::process::Command::new(&program).args(&args).kill_on_drop(true).output();
            match tokio::time::timeout(timeout, run).await {
                Ok(Ok(out)) if out.status.success() => {
                    tracing::info!(command = program, "{what} command done")
                }
                Ok(Ok(out)) => tracing::warn!(
                    command = program,
                    status = %out.status,
                    stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                    "{what} command failed"
                ),
                Ok(Err(e)) => tracing::warn!(command = program, error = %e, "{what} command did not start"),
                Err(_) => tracing::warn!(
                    command = program,
                    timeout_ms = timeout.as_millis() as u64,
                    "{what} command timed out; killed"
                ),
            }
        });
    }

    fn decided(&mut self, a: Answered) {
        let now = Instant::now();
        let input = match a {
            Answered::Placed { id, question, answer } => Input::Decided { now, id, question, answer },
            Answered::Planned { id, answer } => Input::Planned { now, id, answer },
        };
        self.node.handle_input(input);
    }

    fn peer(&mut self, event: FromOverlay) {
        let now = Instant::now();
        let input = match event {
            FromOverlay::Gossip(from, msg) => Input::Gossip { now, from, msg },
            FromOverlay::Request(from, id, req) => Input::PeerRequest { now, from, id, req },
            FromOverlay::Response(id, result) => Input::PeerResponse { now, id, result },
            FromOverlay::Connected(peer) => Input::Connected { now, peer },
            FromOverlay::Rtt(peer, rtt) => Input::Rtt { now, peer, rtt },
            FromOverlay::Located(vm, at) => Input::Located { now, vm, at },
        };
        self.node.handle_input(input);
    }

    fn hypervisor(&mut self, event: FromHypervisor) {
        let now = Instant::now();
        let input = match event {
            FromHypervisor::Done(op, result) => Input::Hypervisor { now, op, result },
            FromHypervisor::Up(inventory, domains) => Input::HypervisorUp { now, inventory, domains },
            FromHypervisor::Down(reason) => Input::HypervisorDown { now, reason },
            FromHypervisor::Sampled(domains) => Input::Sampled { now, domains },
            FromHypervisor::Progress(op, progress) => Input::MigrationProgress { now, op, progress },
        };
        self.node.handle_input(input);
    }
}

/// Feeds `first`, then what is already queued behind it, at most [`BATCH`] in all.
fn batch<T>(first: T, mut queued: impl FnMut() -> Option<T>, mut feed: impl FnMut(T)) {
    feed(first);
    for _ in 1..BATCH {
        match queued() {
            Some(next) => feed(next),
            None => break,
        }
    }
}

fn overlay_settings(
    config: &AgentConfig,
    keypair: libp2p::identity::Keypair,
    telemetry: Telemetry,
) -> Result<overlay::Settings> {
    let parse = |what: &str, list: &[String]| -> Result<Vec<libp2p::Multiaddr>> {
        list.iter()
            .map(|a| {
                a.parse().with_context(|| {
                    format!("{what} address {a:?} is not a multiaddr (e.g. /ip4/10.0.0.5/tcp/7946)")
                })
            })
            .collect()
    };
    let o = &config.overlay;
    let psk = o.cluster_key_file.as_deref().map(overlay::identity::cluster_key).transpose()?;
    if psk.is_none() {
        tracing::warn!("no cluster key (dev mode): any agent that can reach this one can join");
    }
    Ok(overlay::Settings {
        keypair,
        psk,
        listen: parse("overlay.listen", &o.listen)?,
        bootstrap: parse("overlay.bootstrap", &o.bootstrap)?,
        pop: config.pop.name.clone(),
        mdns: o.mdns,
        emulated_latency: o.emulated_latency.clone(),
        telemetry,
    })
}

/// Raises the soft limit on open files to the hard one, so the connection
/// bounds of each listener, not the process limit, decide who is served.
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit"),
        Err(e) => tracing::warn!(error = %e, current = ?limit.current, "could not raise the open-file limit"),
    }
}

/// Makes the state directory (mode 0711), or checks that an existing one is the
/// agent's own: a shared directory (like /tmp, mode 1777) or one another
/// user owns is refused rather than chmodded out from under them.
fn prepare_state_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                bail!("state directory {} is not a directory", dir.display());
            }
            if meta.mode() & 0o1002 != 0 {
                bail!(
                    "state directory {} is shared (mode {:o}); give the agent a directory of its own",
                    dir.display(),
                    meta.mode() & 0o7777
                );
            }
            if meta.uid() != rustix::process::getuid().as_raw() {
                bail!("state directory {} belongs to another user (uid {})", dir.display(), meta.uid());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating state directory {}", dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading state directory {}", dir.display())),
    }
    // Others may pass through (QEMU, running as its own user, reaches the
    // VM disks under it) but not list it; every file in it is private.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("restricting {}", dir.display()))?;
    Ok(())
}

/// Binds the API socket with mode 0600, replacing a stale socket file but
/// never one another agent is listening on.
fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket; refusing to replace it", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another agent is listening on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

async fn signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
        _ = cancel.cancelled() => {}
    }
    cancel.cancel();
}
