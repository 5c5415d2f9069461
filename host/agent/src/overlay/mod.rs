//! The overlay: the agent's libp2p swarm, in its own task, talking to the
//! core task over channels (the Discovery Network Tracker's IO).
//!
//! TCP (with the cluster's pre-shared key, libp2p pnet, under noise and
//! yamux) and, in dev mode only, QUIC; identify feeds Kademlia's routing
//! table; ping measures round trips; gossipsub carries host summaries on a
//! topic per PoP and PoP summaries on a global topic, and policy pushes
//! and agents' policy status on a policy topic; request-response carries
//! the agents' protocol messages in MessagePack, and on a protocol of its
//! own (larger frames) policy bundles fetched by hash, and on another image
//! chunks; Kademlia holds VM location records and says which agents hold
//! which image. The overlay carries the policy and image messages as
//! bytes: the rollout and transfer tasks read them. The swarm keeps a
//! connection to every peer Kademlia knows (the clusters here are tens of
//! agents), so gossip meshes form and every PoP's latency can be measured.

pub mod codec;
pub mod identity;
pub mod shaping;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use libp2p::core::transport::upgrade::Version;
use libp2p::core::{ConnectedPoint, Transport as _};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, kad, mdns, noise, ping, tcp, yamux};
use locus_core::cluster::{Gossip, PeerId as CorePeer, Topic};
use locus_core::node::{InboundId, OutboundId, PeerRequest, PeerResponse};
use serde::Serialize;
use shaping::EmulatedLatency;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What the overlay needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The node's identity.
    pub keypair: Keypair,
    /// The cluster key; None only in dev mode.
    pub psk: Option<PreSharedKey>,
    /// Addresses to listen on (TCP; QUIC too in dev mode).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and whenever alone.
    pub bootstrap: Vec<Multiaddr>,
    /// This agent's PoP.
    pub pop: String,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Round trips to add to dialled connections (tests).
    pub emulated_latency: Vec<EmulatedLatency>,
    /// Where traffic and libp2p's own events are counted.
    pub telemetry: crate::metrics::Telemetry,
}

/// Commands for the overlay task.
#[derive(Debug)]
pub enum ToOverlay {
    /// Publish gossip.
    Gossip(Topic, Gossip),
    /// Send a request.
    Request(OutboundId, CorePeer, PeerRequest),
    /// Answer a request.
    Respond(InboundId, PeerResponse),
    /// Connect to a peer Kademlia knows.
    Dial(CorePeer),
    /// Put the record saying where a VM runs and what it is (or remove it).
    Announce(String, Option<Box<locus_core::cluster::VmLocation>>),
    /// Look up which agent runs a VM.
    Locate(String),
    /// Connect to an address (`locus cluster join`).
    Join(Multiaddr, oneshot::Sender<Result<(), String>>),
    /// Traffic and connection counts.
    Stats(oneshot::Sender<OverlayStats>),
    /// The peers connected now.
    Peers(oneshot::Sender<Vec<CorePeer>>),
    /// Publish on the policy topic.
    PolicyGossip(Vec<u8>),
    /// Ask a peer on a byte protocol.
    Ask(Service, CorePeer, Vec<u8>, AnswerTo),
    /// Answer a question asked on a byte protocol.
    Answer(Service, u64, Vec<u8>),
    /// Tell the DHT this agent holds what `key` names (an image).
    Provide(Vec<u8>),
    /// Stop saying so.
    Unprovide(Vec<u8>),
    /// Look up the agents that hold what `key` names: each is sent as
    /// found, and the sender dropped when the lookup ends.
    Providers(Vec<u8>, mpsc::UnboundedSender<CorePeer>),
}

/// Where the answer to a byte-protocol question goes.
pub type AnswerTo = oneshot::Sender<Result<Vec<u8>, String>>;

/// The protocols that carry opaque bytes between a task of one agent and
/// the same task of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Policy bundles, by hash (the rollout task).
    Bundles,
    /// Image manifests and chunks (the transfer task).
    Chunks,
    /// Decision records of a VM (the records task).
    Records,
}

/// A question from a peer on a byte protocol, to answer with
/// [`ToOverlay::Answer`].
#[derive(Debug)]
pub struct Asked {
    /// Who asks.
    pub from: CorePeer,
    /// What to answer to.
    pub id: u64,
    /// The question.
    pub bytes: Vec<u8>,
}

/// What the overlay reports to the rollout task.
#[derive(Debug)]
pub enum PolicyEvent {
    /// A message on the policy topic.
    Heard(CorePeer, Vec<u8>),
    /// A question on the bundle protocol.
    Asked(Asked),
}

/// What the overlay reports to the core task.
#[derive(Debug)]
pub enum FromOverlay {
    /// Gossip from a peer.
    Gossip(CorePeer, Gossip),
    /// A request from a peer.
    Request(CorePeer, InboundId, PeerRequest),
    /// The answer to a request, or why none came.
    Response(OutboundId, Result<PeerResponse, String>),
    /// Connected to a peer it was not connected to.
    Connected(CorePeer),
    /// A measured round trip.
    Rtt(CorePeer, Duration),
    /// A VM's record, if one was found.
    Located(String, Option<Box<locus_core::cluster::VmLocation>>),
}

/// Overlay counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OverlayStats {
    /// This agent's peer id.
    pub peer: String,
    /// Addresses it listens on.
    pub listening: Vec<String>,
    /// Peers connected now.
    pub connected: u32,
    /// Gossip payload bytes published.
    pub gossip_out_bytes: u64,
    /// Gossip payload bytes received.
    pub gossip_in_bytes: u64,
    /// Seconds since the overlay started.
    pub uptime_s: f64,
    /// Requests and gossip refused as undecodable or too large.
    pub rejected_messages: u64,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    rpc: request_response::Behaviour<RpcCodec>,
    bundles: request_response::Behaviour<BundleCodec>,
    chunks: request_response::Behaviour<BundleCodec>,
    records: request_response::Behaviour<BundleCodec>,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

type RpcCodec = codec::Codec<PeerRequest, PeerResponse>;
type BundleCodec = codec::Codec<serde_bytes::ByteBuf, serde_bytes::ByteBuf>;

/// The bundle protocol's name.
const BUNDLES: StreamProtocol = StreamProtocol::new(BUNDLE_PROTOCOL);
/// The bundle protocol's name.
pub const BUNDLE_PROTOCOL: &str = "/locus/bundles/1";
/// The image chunk protocol's name.
pub const CHUNK_PROTOCOL: &str = "/locus/chunks/1";
/// The decision record protocol's name.
pub const RECORD_PROTOCOL: &str = "/locus/records/1";
/// Largest record-protocol frame: a VM's name, or its newest records.
const MAX_RECORD_FRAME: usize = 1 << 20;
/// Largest chunk-protocol frame: a manifest of an image at the default
/// size cap (64 GiB in 1 MiB chunks: 2 MiB of hashes), or a chunk.
const MAX_CHUNK_FRAME: usize = 3 << 20;
/// The policy topic's name.
pub const POLICY_TOPIC: &str = "locus/policy/1";
/// Largest bundle-protocol frame: a component at the runtime's size cap
/// with its manifest and signature.
const MAX_BUNDLE_FRAME: usize = 17 << 20;
/// The policy topic.
fn policy_topic() -> IdentTopic {
    IdentTopic::new(POLICY_TOPIC)
}

/// Largest gossip message, bytes.
const MAX_GOSSIP: usize = 256 << 10;
/// Connections kept at most.
const MAX_PEERS: usize = 128;

/// The Kademlia key of the record saying where `vm` runs.
fn record_key(vm: &str) -> kad::RecordKey {
    kad::RecordKey::new(&format!("/locus/vm/{vm}"))
}

fn topic(t: &Topic) -> IdentTopic {
    match t {
        Topic::Global => IdentTopic::new("locus/global/1"),
        Topic::Pop(p) => IdentTopic::new(format!("locus/pop/{p}/1")),
    }
}

/// The Kademlia key an agent provides for what it holds.
fn provider_key(key: &[u8]) -> kad::RecordKey {
    kad::RecordKey::new(&key)
}

fn build(
    settings: &Settings,
    rpc_codec: &RpcCodec,
    bundle_codec: &BundleCodec,
    chunk_codec: &BundleCodec,
    record_codec: &BundleCodec,
) -> Result<Swarm<Behaviour>> {
    let psk = settings.psk;
    let shaping = settings.emulated_latency.clone();
    let builder = libp2p::SwarmBuilder::with_existing_identity(settings.keypair.clone()).with_tokio();
    let behaviour =
        |key: &Keypair| -> std::result::Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            let peer = key.public().to_peer_id();
            let gossip_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_secs(1))
                .max_transmit_size(MAX_GOSSIP)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .build()?;
            let mut kad_config = kad::Config::new(StreamProtocol::new("/locus/kad/1"));
            kad_config.set_query_timeout(Duration::from_secs(10));
            let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_config);
            kad.set_mode(Some(kad::Mode::Server));
            Ok(Behaviour {
                identify: identify::Behaviour::new(identify::Config::new("/locus/1".into(), key.public())),
                ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(2))),
                kad,
                gossipsub: gossipsub::Behaviour::new(
                    MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?,
                rpc: request_response::Behaviour::with_codec(
                    rpc_codec.clone(),
                    [(codec::PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
                ),
                bundles: request_response::Behaviour::with_codec(
                    bundle_codec.clone(),
                    [(BUNDLES, ProtocolSupport::Full)],
                    // 16 MiB at 100 Mbit/s takes 1.3 s; a holder slower than
                    // this is left for the next one.
                    request_response::Config::default().with_request_timeout(Duration::from_secs(15)),
                ),
                chunks: request_response::Behaviour::with_codec(
                    chunk_codec.clone(),
                    [(StreamProtocol::new(CHUNK_PROTOCOL), ProtocolSupport::Full)],
                    // A holder paces its uploads (images.upload-limit-mbit)
                    // and answers "busy" past a short queue: an answer this
                    // late means the holder is gone.
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60))
                        .with_max_concurrent_streams(256),
                ),
                records: request_response::Behaviour::with_codec(
                    record_codec.clone(),
                    [(StreamProtocol::new(RECORD_PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
                ),
                mdns: Toggle::from(None),
            })
        };
    let tcp_transport = |key: &Keypair| {
        let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)).map(
            move |stream, endpoint: ConnectedPoint| {
                shaping::shape(stream, shaping::delay_for(&shaping, &endpoint))
            },
        );
        let base = match psk {
            Some(psk) => {
                either::Either::Left(tcp.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket)))
            }
            None => either::Either::Right(tcp),
        };
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            base.upgrade(Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default()),
        )
    };
    let mut swarm = if psk.is_some() {
        builder
            .with_other_transport(tcp_transport)?
            .with_behaviour(behaviour)?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    } else {
        builder
            .with_quic()
            .with_other_transport(tcp_transport)?
            .with_behaviour(behaviour)?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    };
    if settings.mdns {
        let peer = *swarm.local_peer_id();
        let m = mdns::tokio::Behaviour::new(mdns::Config::default(), peer).context("starting mDNS")?;
        swarm.behaviour_mut().mdns = Toggle::from(Some(m));
    }
    for t in [Topic::Global, Topic::Pop(settings.pop.clone())] {
        swarm.behaviour_mut().gossipsub.subscribe(&topic(&t)).context("subscribing")?;
    }
    swarm.behaviour_mut().gossipsub.subscribe(&policy_topic()).context("subscribing")?;
    for addr in &settings.listen {
        swarm.listen_on(addr.clone()).with_context(|| format!("listening on {addr}"))?;
    }
    Ok(swarm)
}

/// Starts the overlay task; returns its inbox.
pub fn spawn(
    settings: Settings,
    to_core: mpsc::UnboundedSender<FromOverlay>,
    to_rollout: mpsc::UnboundedSender<PolicyEvent>,
    to_images: mpsc::UnboundedSender<Asked>,
    to_records: mpsc::UnboundedSender<Asked>,
    cancel: CancellationToken,
) -> Result<(mpsc::UnboundedSender<ToOverlay>, tokio::task::JoinHandle<()>)> {
    if settings.psk.is_some()
        && settings.listen.iter().any(|a| a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1)))
    {
        bail!(
            "QUIC cannot carry the cluster key (libp2p pnet wraps TCP only): listen on TCP, or run with --dev"
        );
    }
    let rejected = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let rpc_codec = RpcCodec::new(codec::MAX_FRAME, rejected.clone());
    let bundle_codec = BundleCodec::new(MAX_BUNDLE_FRAME, rejected.clone());
    let chunk_codec = BundleCodec::new(MAX_CHUNK_FRAME, rejected.clone());
    let record_codec = BundleCodec::new(MAX_RECORD_FRAME, rejected.clone());
    let swarm = build(&settings, &rpc_codec, &bundle_codec, &chunk_codec, &record_codec)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let task = Task {
        swarm,
        to_core,
        to_rollout,
        to_images,
        to_records,
        telemetry: settings.telemetry.clone(),
        asked: HashMap::new(),
        asking: HashMap::new(),
        channels: HashMap::new(),
        pending: HashMap::new(),
        next_inbound: 0,
        stats: OverlayStats::default(),
        started: std::time::Instant::now(),
        bootstrap: settings.bootstrap.clone(),
        rejected,
        lookups: HashMap::new(),
        provider_lookups: HashMap::new(),
        ticks: 0,
    };
    let handle = tokio::spawn(task.run(rx, cancel));
    Ok((tx, handle))
}

struct Task {
    swarm: Swarm<Behaviour>,
    to_core: mpsc::UnboundedSender<FromOverlay>,
    to_rollout: mpsc::UnboundedSender<PolicyEvent>,
    to_images: mpsc::UnboundedSender<Asked>,
    to_records: mpsc::UnboundedSender<Asked>,
    telemetry: crate::metrics::Telemetry,
    /// Byte-protocol questions waiting for a task's answer.
    asked: HashMap<u64, (Service, ResponseChannel<serde_bytes::ByteBuf>)>,
    /// Byte-protocol questions this agent asked.
    asking: HashMap<(Service, OutboundRequestId), AnswerTo>,
    channels: HashMap<u64, ResponseChannel<PeerResponse>>,
    pending: HashMap<OutboundRequestId, OutboundId>,
    next_inbound: u64,
    stats: OverlayStats,
    started: std::time::Instant,
    bootstrap: Vec<Multiaddr>,
    /// Protocol messages the codec refused.
    rejected: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// VM lookups in flight.
    lookups: HashMap<kad::QueryId, String>,
    /// Provider lookups in flight, and where to send what they find.
    provider_lookups: HashMap<kad::QueryId, mpsc::UnboundedSender<CorePeer>>,
    /// Maintenance rounds so far.
    ticks: u64,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ToOverlay>, cancel: CancellationToken) {
        for addr in self.bootstrap.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
            }
        }
        let mut maintain = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = maintain.tick() => self.maintain(),
            }
        }
    }

    fn command(&mut self, cmd: ToOverlay) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            ToOverlay::Gossip(t, msg) => match codec::encode(&msg) {
                Ok(bytes) => {
                    let len = bytes.len() as u64;
                    match b.gossipsub.publish(topic(&t), bytes) {
                        Ok(_) => {
                            self.stats.gossip_out_bytes += len;
                            if let Some(m) = self.telemetry.get() {
                                m.gossip(true, len);
                            }
                        }
                        // No peer on the topic yet: nothing to tell anyone.
                        Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
                        Err(e) => tracing::debug!("gossip not published: {e}"),
                    }
                }
                Err(e) => tracing::warn!("cannot encode gossip: {e}"),
            },
            ToOverlay::Request(id, to, req) => match to.as_str().parse::<PeerId>() {
                Ok(peer) => {
                    let rid = b.rpc.send_request(&peer, req);
                    self.pending.insert(rid, id);
                }
                Err(e) => {
                    let _ =
                        self.to_core.send(FromOverlay::Response(id, Err(format!("bad peer id {to}: {e}"))));
                }
            },
            ToOverlay::Respond(id, resp) => {
                if let Some(channel) = self.channels.remove(&id.0)
                    && b.rpc.send_response(channel, resp).is_err()
                {
                    tracing::debug!("the asking peer went away before the answer");
                }
            }
            ToOverlay::Dial(peer) => {
                if let Ok(peer) = peer.as_str().parse::<PeerId>()
                    && !self.swarm.is_connected(&peer)
                {
                    let _ = self.swarm.dial(peer);
                }
            }
            ToOverlay::Announce(vm, at) => {
                let key = record_key(&vm);
                match at.map(|at| codec::encode(&*at)) {
                    Some(Ok(value)) => {
                        let record = kad::Record::new(key, value);
                        if let Err(e) = self.swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One) {
                            tracing::debug!(%vm, "location record not stored: {e}");
                        }
                    }
                    Some(Err(e)) => tracing::warn!(%vm, "location record not encoded: {e}"),
                    None => self.swarm.behaviour_mut().kad.remove_record(&key),
                }
            }
            ToOverlay::Locate(vm) => {
                let id = self.swarm.behaviour_mut().kad.get_record(record_key(&vm));
                self.lookups.insert(id, vm);
            }
            ToOverlay::Join(addr, done) => {
                let result = self.swarm.dial(addr.clone()).map_err(|e| format!("cannot dial {addr}: {e}"));
                if result.is_ok() {
                    self.bootstrap.push(addr);
                }
                let _ = done.send(result);
            }
            ToOverlay::PolicyGossip(bytes) => {
                let len = bytes.len() as u64;
                match b.gossipsub.publish(policy_topic(), bytes) {
                    Ok(_) => {
                        self.stats.gossip_out_bytes += len;
                        if let Some(m) = self.telemetry.get() {
                            m.gossip(true, len);
                        }
                    }
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
                    Err(e) => tracing::debug!("policy gossip not published: {e}"),
                }
            }
            ToOverlay::Ask(service, to, question, done) => match to.as_str().parse::<PeerId>() {
                Ok(peer) => {
                    let question = serde_bytes::ByteBuf::from(question);
                    let rid = match service {
                        Service::Bundles => b.bundles.send_request(&peer, question),
                        Service::Chunks => b.chunks.send_request(&peer, question),
                        Service::Records => b.records.send_request(&peer, question),
                    };
                    self.asking.insert((service, rid), done);
                }
                Err(e) => {
                    let _ = done.send(Err(format!("bad peer id {to}: {e}")));
                }
            },
            ToOverlay::Answer(service, id, answer) => {
                if let Some((asked_on, channel)) = self.asked.remove(&id) {
                    debug_assert_eq!(asked_on, service);
                    let answer = serde_bytes::ByteBuf::from(answer);
                    let sent = match asked_on {
                        Service::Bundles => b.bundles.send_response(channel, answer),
                        Service::Chunks => b.chunks.send_response(channel, answer),
                        Service::Records => b.records.send_response(channel, answer),
                    };
                    if sent.is_err() {
                        tracing::debug!(?service, "the asking peer went away before the answer");
                    }
                }
            }
            ToOverlay::Provide(key) => {
                if let Err(e) = b.kad.start_providing(provider_key(&key)) {
                    tracing::warn!("cannot record a provided key: {e}");
                }
            }
            ToOverlay::Unprovide(key) => b.kad.stop_providing(&provider_key(&key)),
            ToOverlay::Providers(key, found) => {
                let id = b.kad.get_providers(provider_key(&key));
                self.provider_lookups.insert(id, found);
            }
            ToOverlay::Peers(done) => {
                let _ =
                    done.send(self.swarm.connected_peers().map(|p| CorePeer::from(p.to_string())).collect());
            }
            ToOverlay::Stats(done) => {
                let mut s = self.stats.clone();
                s.peer = self.swarm.local_peer_id().to_string();
                s.listening = self.swarm.listeners().map(ToString::to_string).collect();
                s.connected = self.swarm.connected_peers().count() as u32;
                s.uptime_s = self.started.elapsed().as_secs_f64();
                s.rejected_messages += self.rejected.load(std::sync::atomic::Ordering::Relaxed);
                let _ = done.send(s);
            }
        }
    }

    /// Keeps a connection to every peer Kademlia knows, up to a cap, and
    /// re-dials the bootstrap peers when alone.
    fn maintain(&mut self) {
        let connected = self.swarm.connected_peers().count();
        if connected == 0 {
            for addr in self.bootstrap.clone() {
                let _ = self.swarm.dial(addr);
            }
            return;
        }
        // Walk the DHT now and then to learn peers beyond the ones connected.
        self.ticks += 1;
        if self.ticks % 15 == 1 {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        let known: Vec<PeerId> = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
            .collect();
        let mut room = MAX_PEERS.saturating_sub(connected);
        for peer in known {
            if room == 0 {
                break;
            }
            if !self.swarm.is_connected(&peer) {
                let _ = self.swarm.dial(peer);
                room -= 1;
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(m) = self.telemetry.get() {
            record_p2p(m.p2p(), &event);
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "overlay listening"),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                if num_established.get() == 1 {
                    let _ = self.to_core.send(FromOverlay::Connected(CorePeer::from(peer_id.to_string())));
                }
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                tracing::debug!(%send_back_addr, error = ?error.to_string(), "refused an incoming connection");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => {
                let _ = self.to_core.send(FromOverlay::Rtt(CorePeer::from(peer.to_string()), rtt));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message, ..
            })) => {
                self.stats.gossip_in_bytes += message.data.len() as u64;
                if let Some(m) = self.telemetry.get() {
                    m.gossip(false, message.data.len() as u64);
                }
                let Some(source) = message.source else { return };
                if message.topic == policy_topic().hash() {
                    let _ = self
                        .to_rollout
                        .send(PolicyEvent::Heard(CorePeer::from(source.to_string()), message.data));
                    return;
                }
                match codec::decode::<Gossip>(&message.data) {
                    Ok(msg) => {
                        let _ =
                            self.to_core.send(FromOverlay::Gossip(CorePeer::from(source.to_string()), msg));
                    }
                    Err(e) => {
                        self.stats.rejected_messages += 1;
                        tracing::warn!(peer = %source, error = ?e.to_string(), "gossip refused");
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(event)) => self.rpc(event),
            SwarmEvent::Behaviour(BehaviourEvent::Bundles(event)) => self.bytes(Service::Bundles, event),
            SwarmEvent::Behaviour(BehaviourEvent::Chunks(event)) => self.bytes(Service::Chunks, event),
            SwarmEvent::Behaviour(BehaviourEvent::Records(event)) => self.bytes(Service::Records, event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            })) => {
                let me = *self.swarm.local_peer_id();
                if let Some(found) = self.provider_lookups.get(&id)
                    && let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result
                {
                    for peer in providers.into_iter().filter(|p| *p != me) {
                        let _ = found.send(CorePeer::from(peer.to_string()));
                    }
                }
                if step.last {
                    self.provider_lookups.remove(&id);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetRecord(result),
                ..
            })) => {
                let Some(vm) = self.lookups.remove(&id) else { return };
                let at = match result {
                    Ok(kad::GetRecordOk::FoundRecord(found)) => {
                        match codec::decode::<locus_core::cluster::VmLocation>(&found.record.value) {
                            Ok(at) => Some(Box::new(at)),
                            Err(e) => {
                                tracing::warn!(%vm, error = %e, "a location record that does not decode is ignored");
                                None
                            }
                        }
                    }
                    _ => None,
                };
                let _ = self.to_core.send(FromOverlay::Located(vm, at));
            }
            _ => {}
        }
    }

    /// An event of a byte protocol: questions go to the task that serves
    /// the protocol, answers to whoever asked.
    fn bytes(
        &mut self,
        service: Service,
        event: request_response::Event<serde_bytes::ByteBuf, serde_bytes::ByteBuf>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                self.next_inbound += 1;
                self.asked.insert(self.next_inbound, (service, channel));
                let asked = Asked {
                    from: CorePeer::from(peer.to_string()),
                    id: self.next_inbound,
                    bytes: request.into_vec(),
                };
                let _ = match service {
                    Service::Bundles => self.to_rollout.send(PolicyEvent::Asked(asked)).is_ok(),
                    Service::Chunks => self.to_images.send(asked).is_ok(),
                    Service::Records => self.to_records.send(asked).is_ok(),
                };
            }
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                if let Some(done) = self.asking.remove(&(service, request_id)) {
                    let _ = done.send(Ok(response.into_vec()));
                }
            }
            Event::OutboundFailure { request_id, error, peer, .. } => {
                if let Some(done) = self.asking.remove(&(service, request_id)) {
                    let _ = done.send(Err(format!("peer {peer}: {error}")));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                self.stats.rejected_messages += 1;
                tracing::warn!(%peer, ?service, error = ?error.to_string(), "request refused");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn rpc(&mut self, event: request_response::Event<PeerRequest, PeerResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                self.next_inbound += 1;
                self.channels.insert(self.next_inbound, channel);
                let id = InboundId(self.next_inbound);
                let _ =
                    self.to_core.send(FromOverlay::Request(CorePeer::from(peer.to_string()), id, request));
            }
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                if let Some(id) = self.pending.remove(&request_id) {
                    let _ = self.to_core.send(FromOverlay::Response(id, Ok(response)));
                }
            }
            Event::OutboundFailure { request_id, error, peer, .. } => {
                if let Some(id) = self.pending.remove(&request_id) {
                    let _ =
                        self.to_core.send(FromOverlay::Response(id, Err(format!("peer {peer}: {error}"))));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                self.stats.rejected_messages += 1;
                tracing::warn!(%peer, error = ?error.to_string(), "request refused");
            }
            Event::ResponseSent { .. } => {}
        }
    }
}

/// Counts a swarm event, and the events of the protocols libp2p's metrics
/// know, in libp2p's families.
fn record_p2p(m: &libp2p::metrics::Metrics, event: &SwarmEvent<BehaviourEvent>) {
    use libp2p::metrics::Recorder;
    m.record(event);
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => m.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => m.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.record(e),
        _ => {}
    }
}
