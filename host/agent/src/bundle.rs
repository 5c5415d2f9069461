//! Signed policy bundles: a component with its name, version, intended
//! slot and configuration, and an operator's ed25519 signature over all of
//! it. Agents trust the public keys their configuration lists; once one is
//! listed, only a bundle that [`open`]s is loaded, whether it was pushed
//! over the overlay or loaded on one agent.
//!
//! The signature covers a domain tag and the MessagePack encoding of the
//! [`Manifest`], which holds the component's SHA-256: changing any byte of
//! the component, the manifest or the signature is caught. A signature
//! block must name its key, and the key must be trusted: a bundle whose
//! block lacks one is unsigned, not "signed by anyone" (OPA's advisory).

use crate::policies::{SlotName, check_config};
use anyhow::{Context, Result};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The first bytes of every bundle file (a component starts with `\0asm`).
pub const MAGIC: &[u8; 8] = b"LOCUSPB1";
/// What the signature covers first, so it cannot be replayed as another
/// kind of signed message.
const DOMAIN: &[u8] = b"locus policy bundle v1\0";
/// Longest policy version string, bytes.
const MAX_VERSION: usize = 64;

/// What a bundle says about its component; every field is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The policy's name (shown in listings and decisions).
    pub name: String,
    /// The author's version, e.g. `1.4.0`.
    pub version: String,
    /// The slot it is meant for.
    pub slot: SlotName,
    /// The configuration it runs with.
    pub config: BTreeMap<String, String>,
    /// SHA-256 of the component, hex.
    pub component: String,
    /// Component size, bytes.
    pub size: u64,
    /// When it was signed, Unix seconds.
    pub signed_at: u64,
    /// Refused after this, Unix seconds.
    pub expires_at: u64,
}

/// The signature block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signature {
    /// The signer's ed25519 public key.
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    /// The ed25519 signature over [`DOMAIN`] and the manifest.
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    manifest: Manifest,
    signature: Option<Signature>,
    #[serde(with = "serde_bytes")]
    component: Vec<u8>,
}

/// A bundle that opened: its manifest verified against its signature and
/// component.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// What it says.
    pub manifest: Manifest,
    /// The component's bytes.
    pub component: Vec<u8>,
    /// The signer's public key, hex; `None` when unsigned (accepted only by
    /// agents that trust no key).
    pub signer: Option<String>,
    /// SHA-256 of the whole bundle file, hex: its id on the overlay.
    pub hash: String,
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle file at all.
    #[error("not a policy bundle (it does not start with {MAGIC:?}); make one with `locus policy sign`")]
    NotABundle,
    /// The framing does not decode.
    #[error("the bundle does not decode: {0}")]
    Undecodable(String),
    /// No signature, on an agent that trusts keys.
    #[error("the bundle is unsigned and this agent only loads bundles signed by a trusted key")]
    Unsigned,
    /// Signed by a key the agent does not trust.
    #[error("the bundle is signed by key {0}, which this agent does not trust")]
    UnknownKey(String),
    /// The signature does not match the manifest: it was changed after signing.
    #[error("the bundle's signature does not verify: its manifest or signature was changed after signing")]
    BadSignature,
    /// The component does not match the signed hash.
    #[error("the bundle's component does not match its signed hash: it was changed after signing")]
    Tampered,
    /// Past its expiry.
    #[error("the bundle expired at {0} (Unix seconds); sign it again")]
    Expired(u64),
    /// The manifest itself is unacceptable.
    #[error("the bundle's manifest is invalid: {0}")]
    Invalid(String),
}

/// The keys an agent trusts.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: Vec<VerifyingKey>,
}

impl Trust {
    /// Parses hex-encoded ed25519 public keys (as `locus policy keygen` prints them).
    pub fn parse(keys: &[String]) -> Result<Self> {
        let keys = keys
            .iter()
            .map(|k| public_key(k).with_context(|| format!("trusted policy key {k:?}")))
            .collect::<Result<_>>()?;
        Ok(Trust { keys })
    }

    /// Whether any key is trusted: then only signed bundles are loaded.
    pub fn enforcing(&self) -> bool {
        !self.keys.is_empty()
    }
}

fn public_key(hex_key: &str) -> Result<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .context("not hex")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("an ed25519 public key is 32 bytes (64 hex digits)"))?;
    VerifyingKey::from_bytes(&bytes).context("not an ed25519 public key")
}

/// True when `bytes` look like a bundle rather than a bare component.
pub fn is_bundle(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// SHA-256 of `bytes`, hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn signed_bytes(manifest: &Manifest) -> Result<Vec<u8>, BundleError> {
    let mut out = DOMAIN.to_vec();
    let encoded = rmp_serde::to_vec_named(manifest).map_err(|e| BundleError::Undecodable(e.to_string()))?;
    out.extend(encoded);
    Ok(out)
}

/// Decodes and verifies a bundle: framing, manifest, component hash,
/// signature, trusted key, expiry, in that order, each failure with its
/// reason. With no trusted key, an unsigned bundle is accepted and a
/// signed one is still checked for integrity.
pub fn open(bytes: &[u8], trust: &Trust) -> Result<Bundle, BundleError> {
    let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or(BundleError::NotABundle)?;
    let wire: Wire = rmp_serde::from_slice(body).map_err(|e| BundleError::Undecodable(e.to_string()))?;
    let m = &wire.manifest;
    if !locus_core::request::valid_name(&m.name) {
        return Err(BundleError::Invalid(format!("policy name {:?}", m.name)));
    }
    if m.version.len() > MAX_VERSION || m.version.chars().any(char::is_control) {
        return Err(BundleError::Invalid(format!(
            "version: at most {MAX_VERSION} bytes without control characters"
        )));
    }
    check_config(&m.config).map_err(BundleError::Invalid)?;
    if sha256(&wire.component) != m.component || wire.component.len() as u64 != m.size {
        return Err(BundleError::Tampered);
    }
    let signer = match &wire.signature {
        None => None,
        Some(s) => {
            let key: [u8; 32] = s.key.as_slice().try_into().map_err(|_| BundleError::Unsigned)?;
            let key = VerifyingKey::from_bytes(&key).map_err(|_| BundleError::BadSignature)?;
            if trust.enforcing() && !trust.keys.contains(&key) {
                return Err(BundleError::UnknownKey(hex::encode(key.as_bytes())));
            }
            let sig: [u8; 64] = s.sig.as_slice().try_into().map_err(|_| BundleError::BadSignature)?;
            key.verify_strict(&signed_bytes(m)?, &ed25519_dalek::Signature::from_bytes(&sig))
                .map_err(|_| BundleError::BadSignature)?;
            Some(hex::encode(key.as_bytes()))
        }
    };
    if signer.is_none() && trust.enforcing() {
        return Err(BundleError::Unsigned);
    }
    if signer.is_some() && m.expires_at < now_s() {
        return Err(BundleError::Expired(m.expires_at));
    }
    Ok(Bundle { manifest: wire.manifest, component: wire.component, signer, hash: sha256(bytes) })
}

/// What [`sign`] puts in the manifest besides the component.
#[derive(Debug, Clone)]
pub struct SignRequest {
    /// The policy's name.
    pub name: String,
    /// The author's version.
    pub version: String,
    /// The slot it is meant for.
    pub slot: SlotName,
    /// Its configuration.
    pub config: BTreeMap<String, String>,
    /// How long it may be loaded for, seconds from now.
    pub valid_for_s: u64,
}

/// Makes a signed bundle of `component`.
pub fn sign(component: &[u8], what: SignRequest, key: &SigningKey) -> Result<Vec<u8>> {
    check_config(&what.config).map_err(anyhow::Error::msg)?;
    let now = now_s();
    let manifest = Manifest {
        name: what.name,
        version: what.version,
        slot: what.slot,
        config: what.config,
        component: sha256(component),
        size: component.len() as u64,
        signed_at: now,
        expires_at: now.saturating_add(what.valid_for_s),
    };
    let sig = key.sign(&signed_bytes(&manifest)?);
    let signature =
        Some(Signature { key: key.verifying_key().as_bytes().to_vec(), sig: sig.to_bytes().to_vec() });
    encode(&Wire { manifest, signature, component: component.to_vec() })
}

fn encode(wire: &Wire) -> Result<Vec<u8>> {
    let mut out = MAGIC.to_vec();
    out.extend(rmp_serde::to_vec_named(wire).context("encoding the bundle")?);
    Ok(out)
}

/// A new signing key: (secret as hex, public as hex).
pub fn keygen() -> Result<(String, String)> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("reading randomness: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    Ok((hex::encode(seed), hex::encode(key.verifying_key().as_bytes())))
}

/// Reads a secret key file written by `locus policy keygen`.
pub fn read_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} is not a policy signing key (64 hex digits)", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The manifest of a bundle, read without verifying it (for the CLI to
/// name the slot before the agent verifies).
pub fn peek(bytes: &[u8]) -> Result<Manifest, BundleError> {
    let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or(BundleError::NotABundle)?;
    let wire: Wire = rmp_serde::from_slice(body).map_err(|e| BundleError::Undecodable(e.to_string()))?;
    Ok(wire.manifest)
}

/// Test helpers: bundles damaged the ways an attacker would.
#[doc(hidden)]
pub mod hostile {
    use super::*;

    /// The bundle with its signature block removed.
    pub fn strip_signature(bytes: &[u8]) -> Result<Vec<u8>> {
        let mut wire: Wire = rmp_serde::from_slice(&bytes[MAGIC.len()..]).context("decoding")?;
        wire.signature = None;
        encode(&wire)
    }

    /// The bundle with its configuration changed after signing.
    pub fn change_config(bytes: &[u8], key: &str, value: &str) -> Result<Vec<u8>> {
        let mut wire: Wire = rmp_serde::from_slice(&bytes[MAGIC.len()..]).context("decoding")?;
        wire.manifest.config.insert(key.into(), value.into());
        encode(&wire)
    }

    /// The bundle with one byte of its component flipped.
    pub fn flip_component_byte(bytes: &[u8]) -> Result<Vec<u8>> {
        let mut wire: Wire = rmp_serde::from_slice(&bytes[MAGIC.len()..]).context("decoding")?;
        let last = wire.component.len().saturating_sub(1);
        if let Some(b) = wire.component.get_mut(last) {
            *b ^= 0xff;
        }
        encode(&wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (SigningKey, String) {
        let (secret, public) = keygen().expect("keygen");
        let seed: [u8; 32] = hex::decode(secret).expect("hex").try_into().expect("32");
        (SigningKey::from_bytes(&seed), public)
    }

    fn request() -> SignRequest {
        SignRequest {
            name: "spread".into(),
            version: "1.0.0".into(),
            slot: SlotName::Placement,
            config: BTreeMap::from([("weight".into(), "3".into())]),
            valid_for_s: 3600,
        }
    }

    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0 not really a component, the bundle does not care";

    #[test]
    fn a_signed_bundle_opens_and_every_damage_is_named() {
        let (k, public) = key();
        let trust = Trust::parse(std::slice::from_ref(&public)).expect("trust");
        let bytes = sign(COMPONENT, request(), &k).expect("sign");
        let b = open(&bytes, &trust).expect("opens");
        assert_eq!(b.component, COMPONENT);
        assert_eq!(b.signer.as_deref(), Some(public.as_str()));
        assert_eq!(b.manifest.config["weight"], "3");
        assert_eq!(b.hash, sha256(&bytes));

        let stripped = hostile::strip_signature(&bytes).expect("strip");
        assert_eq!(open(&stripped, &trust).err(), Some(BundleError::Unsigned));
        assert!(open(&stripped, &Trust::default()).is_ok(), "no trusted key: unsigned is accepted");
        let changed = hostile::change_config(&bytes, "weight", "9").expect("change");
        assert_eq!(open(&changed, &trust).err(), Some(BundleError::BadSignature));
        assert_eq!(open(&changed, &Trust::default()).err(), Some(BundleError::BadSignature));
        let flipped = hostile::flip_component_byte(&bytes).expect("flip");
        assert_eq!(open(&flipped, &trust).err(), Some(BundleError::Tampered));
        let (stranger, _) = key();
        let foreign = sign(COMPONENT, request(), &stranger).expect("sign");
        assert!(matches!(open(&foreign, &trust), Err(BundleError::UnknownKey(_))));
        let expired = sign(COMPONENT, SignRequest { valid_for_s: 0, ..request() }, &k).expect("sign");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(matches!(open(&expired, &trust), Err(BundleError::Expired(_))));
        assert_eq!(open(COMPONENT, &trust).err(), Some(BundleError::NotABundle));
        let mut cut = bytes.clone();
        cut.truncate(bytes.len() / 2);
        assert!(matches!(open(&cut, &trust), Err(BundleError::Undecodable(_))));
    }

    #[test]
    fn a_signature_block_without_a_whole_key_is_unsigned() {
        let (k, public) = key();
        let trust = Trust::parse(&[public]).expect("trust");
        let bytes = sign(COMPONENT, request(), &k).expect("sign");
        let mut wire: Wire = rmp_serde::from_slice(&bytes[MAGIC.len()..]).expect("decode");
        if let Some(s) = wire.signature.as_mut() {
            s.key.clear();
        }
        assert_eq!(open(&encode(&wire).expect("encode"), &trust).err(), Some(BundleError::Unsigned));
    }

    #[test]
    fn trusted_keys_must_be_ed25519_public_keys() {
        assert!(Trust::parse(&["zz".into()]).is_err());
        assert!(Trust::parse(&["00".repeat(31)]).is_err());
        assert!(!Trust::parse(&[]).expect("empty").enforcing());
    }
}
