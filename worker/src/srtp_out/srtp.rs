//! SRTP for RTP sealed in place, where the packet already lies in the
//! outbox: the header stays clear, the payload is encrypted where it is and
//! the authentication tag is appended. webrtc-srtp's `Context::encrypt_rtp`
//! does the same work with a parsed header, a fresh output buffer (and, for
//! GCM, a ciphertext vector) per packet, and for AES-CM a key expansion per
//! packet (docs/profile.md).
//!
//! The two profiles viewers negotiate with the worker:
//! - `AES_CM_128_HMAC_SHA1_80` (RFC 3711), what Chrome lists first:
//!   AES-128 in counter mode, HMAC-SHA1 over the header, the ciphertext and
//!   the rollover counter, cut to 80 bits;
//! - `AEAD_AES_128_GCM` (RFC 7714), what webrtc-rs lists first: the header
//!   is the additional authenticated data, and the tag is 128 bits.
//!
//! The ciphers: AES-GCM is ring's (its assembly interleaves AES and
//! carry-less multiply over several blocks: 3.6 times the packets per second
//! of RustCrypto's `aes-gcm`, which webrtc-srtp uses, on the bench machine);
//! AES-CTR and HMAC-SHA1 are RustCrypto's (`aes`, `ctr`, `hmac`, `sha1`, as
//! in webrtc-srtp: ring has no AES-CTR, and its SHA-1 ran at a third of the
//! packets per second), with AES-NI and SHA extensions when
//! the CPU has them. The session keys and salts come from the DTLS
//! master key and salt by the AES-CM key derivation of RFC 3711 §4.3 with
//! a key derivation rate of 0 (RFC 5764 §4.1.2). RTCP and other profiles
//! stay with webrtc-srtp (`super::SrtpOut`). `tests` checks every byte
//! against webrtc-srtp's output.

use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128;
use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use sha1::Sha1;
use webrtc::srtp::protection_profile::ProtectionProfile;

/// Master (and session) key length of both profiles.
const KEY_LEN: usize = 16;
/// Master salt length of AES-CM, and of the AEAD profiles.
const CM_SALT_LEN: usize = 14;
const GCM_SALT_LEN: usize = 12;
/// HMAC-SHA1 session key length (RFC 3711 §8.2: n_a = 160 bits).
const AUTH_KEY_LEN: usize = 20;
/// Appended tags: 80 bits of HMAC-SHA1, or GCM's 128 bits.
const CM_TAG_LEN: usize = 10;
const GCM_TAG_LEN: usize = 16;

/// RFC 3711 §4.3.1 key derivation labels for SRTP.
const LABEL_ENCRYPTION: u8 = 0x00;
const LABEL_AUTHENTICATION: u8 = 0x01;
const LABEL_SALT: u8 = 0x02;

/// Why a sealer could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{profile} wants a {want_key}-byte master key and a {want_salt}-byte salt, not {key} and {salt}")]
pub struct KeyLengths {
    pub profile: &'static str,
    pub want_key: usize,
    pub want_salt: usize,
    pub key: usize,
    pub salt: usize,
}

/// One direction's SRTP session keys for RTP, for one of the two profiles.
// One per viewer, made once and not moved on the hot path: the variants'
// sizes (expanded keys, HMAC states) do not matter.
#[allow(clippy::large_enum_variant)]
pub enum RtpSealer {
    CmSha1_80(CmSha1),
    Gcm {
        cipher: LessSafeKey,
        salt: [u8; GCM_SALT_LEN],
    },
}

/// AES_CM_128_HMAC_SHA1_80's session keys.
pub struct CmSha1 {
    cipher: Aes128,
    /// Keyed once; cloned per packet (its inner and outer hash states).
    auth: Hmac<Sha1>,
    salt: [u8; CM_SALT_LEN],
}

impl RtpSealer {
    /// The sealer for `profile` on the side that owns `master_key` and
    /// `master_salt` (the DTLS exporter's local keys); `None` for a profile
    /// sealed by webrtc-srtp instead.
    pub fn new(
        profile: ProtectionProfile,
        master_key: &[u8],
        master_salt: &[u8],
    ) -> Result<Option<Self>, KeyLengths> {
        let (name, salt_len) = match profile {
            ProtectionProfile::Aes128CmHmacSha1_80 => ("AES_CM_128_HMAC_SHA1_80", CM_SALT_LEN),
            ProtectionProfile::AeadAes128Gcm => ("AEAD_AES_128_GCM", GCM_SALT_LEN),
            _ => return Ok(None),
        };
        if master_key.len() != KEY_LEN || master_salt.len() != salt_len {
            return Err(KeyLengths {
                profile: name,
                want_key: KEY_LEN,
                want_salt: salt_len,
                key: master_key.len(),
                salt: master_salt.len(),
            });
        }
        let kdf = Aes128::new(master_key.into());
        let prf = |label, out: &mut [u8]| derive(&kdf, master_salt, label, out);
        let mut key = [0u8; KEY_LEN];
        prf(LABEL_ENCRYPTION, &mut key);
        Ok(Some(match profile {
            ProtectionProfile::AeadAes128Gcm => {
                let mut salt = [0u8; GCM_SALT_LEN];
                prf(LABEL_SALT, &mut salt);
                Self::Gcm {
                    cipher: LessSafeKey::new(
                        UnboundKey::new(&AES_128_GCM, &key).expect("a 16-byte key"),
                    ),
                    salt,
                }
            }
            _ => {
                let (mut auth, mut salt) = ([0u8; AUTH_KEY_LEN], [0u8; CM_SALT_LEN]);
                prf(LABEL_AUTHENTICATION, &mut auth);
                prf(LABEL_SALT, &mut salt);
                Self::CmSha1_80(CmSha1 {
                    cipher: Aes128::new(&key.into()),
                    auth: <Hmac<Sha1> as Mac>::new_from_slice(&auth)
                        .expect("HMAC takes a key of any length"),
                    salt,
                })
            }
        }))
    }

    /// Bytes the seal adds to a packet.
    pub fn tag_len(&self) -> usize {
        match self {
            Self::CmSha1_80(_) => CM_TAG_LEN,
            Self::Gcm { .. } => GCM_TAG_LEN,
        }
    }

    /// Seals the RTP packet that starts at `buf[start..]` and runs to the
    /// end of `buf`, its first `header_len` bytes the header: encrypts the
    /// payload in place and appends the tag. `roc` is the stream's rollover
    /// counter for the packet's sequence number (how often it had wrapped).
    pub fn seal(&self, buf: &mut Vec<u8>, start: usize, header_len: usize, roc: u32) {
        let (head, payload) = buf[start..].split_at_mut(header_len);
        let (ssrc, seq) = (&head[8..12], &head[2..4]);
        match self {
            Self::CmSha1_80(CmSha1 { cipher, auth, salt }) => {
                // RFC 3711 §4.1.1: salt·2^16 XOR SSRC·2^64 XOR index·2^16.
                let mut iv = [0u8; 16];
                iv[4..8].copy_from_slice(ssrc);
                iv[8..12].copy_from_slice(&roc.to_be_bytes());
                iv[12..14].copy_from_slice(seq);
                xor(&mut iv, salt);
                let core = ctr::CtrCore::<Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(
                    cipher.clone(),
                    &iv.into(),
                );
                ctr::Ctr128BE::from_core(core).apply_keystream(payload);
                let mut mac = auth.clone();
                mac.update(&buf[start..]);
                mac.update(&roc.to_be_bytes());
                let tag = mac.finalize().into_bytes();
                buf.extend_from_slice(&tag[..CM_TAG_LEN]);
            }
            Self::Gcm { cipher, salt } => {
                // RFC 7714 §8.1: 00 00 || SSRC || ROC || SEQ, XOR the salt.
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(ssrc);
                iv[6..10].copy_from_slice(&roc.to_be_bytes());
                iv[10..12].copy_from_slice(seq);
                xor(&mut iv, salt);
                let tag = cipher
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(iv),
                        Aad::from(&*head),
                        payload,
                    )
                    .expect("an RTP payload is far below GCM's 64 GiB limit");
                buf.extend_from_slice(tag.as_ref());
            }
        }
    }
}

fn xor(into: &mut [u8], with: &[u8]) {
    for (b, s) in into.iter_mut().zip(with) {
        *b ^= s;
    }
}

/// The AES-CM PRF's output for `label` (RFC 3711 §4.3.1 with index 0),
/// enough to fill `out`: block `i` is the master salt, zero-padded to 16
/// bytes, with the label XORed into byte 7 and `i` in the last two bytes,
/// encrypted with the master key.
fn derive(kdf: &Aes128, master_salt: &[u8], label: u8, out: &mut [u8]) {
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = [0u8; 16];
        block[..master_salt.len()].copy_from_slice(master_salt);
        block[7] ^= label;
        block[14..].copy_from_slice(&(i as u16).to_be_bytes());
        let mut block = block.into();
        kdf.encrypt_block(&mut block);
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests;
