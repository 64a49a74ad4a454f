//! PIN pairing: the client's identity and the four-step exchange, as pure
//! state machines for both sides. The caller draws the random bytes
//! (salt, challenges, secrets) and passes them in; nothing here reads a clock
//! or an RNG except [`Identity::generate`].
//!
//! The exchange (Gen 7 hosts, SHA-256; all binary values hex on the wire):
//!
//! 1. `getservercert` — the client sends `salt` (16 bytes) and `clientcert`
//!    (its PEM). Both derive `key = SHA-256(salt ‖ PIN)[..16]`. The host
//!    answers `plaincert`, its certificate PEM.
//! 2. `clientchallenge` — the client sends `AES-128-ECB(key, client_challenge)`.
//!    The host answers `AES-ECB(key, SHA-256(client_challenge ‖
//!    host_cert.signature ‖ host_secret) ‖ host_challenge)`.
//! 3. `serverchallengeresp` — the client sends `AES-ECB(key, SHA-256(host_challenge
//!    ‖ client_cert.signature ‖ client_secret))`. The host answers
//!    `pairingsecret = host_secret ‖ RSA-SHA256(host key, host_secret)`.
//!    The client now checks the signature against the certificate of step 1
//!    (a man in the middle who swapped the certificate cannot sign) and the
//!    hash of step 2 (a host that does not know the PIN, or used another
//!    certificate, cannot produce it).
//! 4. `clientpairingsecret` — the client sends `client_secret ‖ RSA-SHA256(client
//!    key, client_secret)`. The host checks the hash of step 3 (a wrong PIN
//!    decrypts to garbage) and the signature, and answers `paired=1` or `0`.
//!
//! After pairing each side pins the other's certificate: the client's HTTPS
//! requests present its certificate and accept only the host's.

use std::time::{Duration, SystemTime};

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;
use rand_core::CryptoRngCore;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use thiserror::Error;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::{Decode, DecodePem, Encode, EncodePem};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

/// Why pairing failed. Each kind is a distinct cause a caller can act on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PairingError {
    #[error("the PIN does not match (the other side's hash disagrees)")]
    WrongPin,
    #[error("the host's signature does not match the certificate it sent: man in the middle?")]
    ServerSignature,
    #[error("the client's signature does not match its certificate")]
    ClientSignature,
    #[error("the host refused to pair (already pairing with another client, or pairing declined)")]
    Refused,
    #[error("malformed pairing message: {0}")]
    Malformed(&'static str),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("RSA: {0}")]
    Rsa(String),
}

/// A certificate and RSA key: the client's identity, or the host's.
#[derive(Clone)]
pub struct Identity {
    key: RsaPrivateKey,
    cert: PeerCert,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh RSA-2048 key and a self-signed certificate valid for 20
    /// years from `not_before`, with common name `cn` (clients use
    /// "NVIDIA GameStream Client").
    pub fn generate(
        rng: &mut impl CryptoRngCore,
        cn: &str,
        not_before: SystemTime,
    ) -> Result<Self, PairingError> {
        let key = RsaPrivateKey::new(rng, 2048).map_err(|e| PairingError::Rsa(e.to_string()))?;
        Self::self_signed(key, cn, not_before)
    }

    /// A self-signed certificate for an existing key.
    pub fn self_signed(
        key: RsaPrivateKey,
        cn: &str,
        not_before: SystemTime,
    ) -> Result<Self, PairingError> {
        let cert_err = |e: &dyn std::fmt::Display| PairingError::Certificate(e.to_string());
        let signer = SigningKey::<Sha256>::new(key.clone());
        let not_after = not_before + Duration::from_secs(20 * 365 * 24 * 3600);
        let validity = Validity {
            not_before: Time::try_from(not_before).map_err(|e| cert_err(&e))?,
            not_after: Time::try_from(not_after).map_err(|e| cert_err(&e))?,
        };
        let subject: Name = format!("CN={cn}").parse().map_err(|e| cert_err(&e))?;
        let spki =
            SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).map_err(|e| cert_err(&e))?;
        let builder = CertificateBuilder::new(
            Profile::Root,
            SerialNumber::from(1u32),
            validity,
            subject,
            spki,
            &signer,
        )
        .map_err(|e| cert_err(&e))?;
        let cert = builder.build::<Signature>().map_err(|e| cert_err(&e))?;
        let pem = cert.to_pem(LineEnding::LF).map_err(|e| cert_err(&e))?;
        Ok(Self {
            key,
            cert: PeerCert::from_pem(pem.as_bytes())?,
        })
    }

    /// From a certificate PEM and a PKCS#8 private key PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PairingError> {
        let key =
            RsaPrivateKey::from_pkcs8_pem(key_pem).map_err(|e| PairingError::Rsa(e.to_string()))?;
        let cert = PeerCert::from_pem(cert_pem.as_bytes())?;
        if cert.public_key != key.to_public_key() {
            return Err(PairingError::Certificate(
                "key does not match certificate".into(),
            ));
        }
        Ok(Self { key, cert })
    }

    pub fn cert(&self) -> &PeerCert {
        &self.cert
    }

    /// The private key as PKCS#8 PEM (for TLS and for storage).
    pub fn key_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|s| s.to_string())
            .expect("an RSA key encodes")
    }

    /// PKCS#1 v1.5 SHA-256 signature (deterministic).
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        SigningKey::<Sha256>::new(self.key.clone())
            .sign(data)
            .to_vec()
    }
}

/// The other side's certificate: what is pinned after pairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    pem: String,
    der: Vec<u8>,
    public_key: RsaPublicKey,
    signature: Vec<u8>,
}

impl PeerCert {
    pub fn from_pem(pem: &[u8]) -> Result<Self, PairingError> {
        let text = std::str::from_utf8(pem)
            .map_err(|_| PairingError::Malformed("certificate is not UTF-8"))?;
        let cert =
            Certificate::from_pem(text).map_err(|e| PairingError::Certificate(e.to_string()))?;
        let der = cert
            .to_der()
            .map_err(|e| PairingError::Certificate(e.to_string()))?;
        Self::from_cert(text.to_string(), der, &cert)
    }

    pub fn from_der(der: &[u8]) -> Result<Self, PairingError> {
        let cert =
            Certificate::from_der(der).map_err(|e| PairingError::Certificate(e.to_string()))?;
        let pem = cert
            .to_pem(LineEnding::LF)
            .map_err(|e| PairingError::Certificate(e.to_string()))?;
        Self::from_cert(pem, der.to_vec(), &cert)
    }

    fn from_cert(pem: String, der: Vec<u8>, cert: &Certificate) -> Result<Self, PairingError> {
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| PairingError::Certificate(e.to_string()))?;
        let public_key = RsaPublicKey::from_public_key_der(&spki)
            .map_err(|e| PairingError::Rsa(e.to_string()))?;
        let signature = cert.signature.raw_bytes().to_vec();
        Ok(Self {
            pem,
            der,
            public_key,
            signature,
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }
    pub fn der(&self) -> &[u8] {
        &self.der
    }
    /// The certificate's own signature bytes, which the pairing hashes cover.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }
    pub fn public_key_der(&self) -> Vec<u8> {
        self.public_key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .expect("an RSA key encodes")
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = Signature::try_from(signature) else {
            return false;
        };
        VerifyingKey::<Sha256>::new(self.public_key.clone())
            .verify(data, &sig)
            .is_ok()
    }
}

/// `SHA-256(salt ‖ pin)[..16]`, the AES key of the exchange.
pub fn pin_key(salt: &[u8; 16], pin: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(pin.as_bytes());
    h.finalize()[..16].try_into().expect("32 bytes")
}

fn ecb(key: &[u8; 16], data: &[u8], encrypt: bool) -> Result<Vec<u8>, PairingError> {
    if data.len() % 16 != 0 {
        return Err(PairingError::Malformed("AES block length"));
    }
    let cipher = Aes128::new(key.into());
    let mut out = data.to_vec();
    for block in out.chunks_mut(16) {
        let b = aes::Block::from_mut_slice(block);
        if encrypt {
            cipher.encrypt_block(b);
        } else {
            cipher.decrypt_block(b);
        }
    }
    Ok(out)
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn unhex(s: &str, what: &'static str) -> Result<Vec<u8>, PairingError> {
    hex::decode(s.trim()).map_err(|_| PairingError::Malformed(what))
}

fn hex_upper(b: &[u8]) -> String {
    hex::encode_upper(b)
}

/// The query parameters of each client request (all values hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairRequest {
    /// `phrase=getservercert&salt=…&clientcert=…`
    GetServerCert { salt: String, client_cert: String },
    /// `clientchallenge=…`
    ClientChallenge(String),
    /// `serverchallengeresp=…`
    ServerChallengeResp(String),
    /// `clientpairingsecret=…`
    ClientPairingSecret(String),
}

#[derive(Debug)]
enum ClientStage {
    AwaitServerCert,
    AwaitChallengeResponse {
        server_cert: PeerCert,
    },
    AwaitPairingSecret {
        server_cert: PeerCert,
        server_hash: [u8; 32],
        client_secret: [u8; 16],
    },
    AwaitPaired {
        server_cert: PeerCert,
    },
    Done,
}

/// Client side of pairing.
#[derive(Debug)]
pub struct ClientPairing {
    identity: Identity,
    key: [u8; 16],
    client_challenge: [u8; 16],
    stage: ClientStage,
}

impl ClientPairing {
    /// Starts pairing; returns the first request.
    pub fn start(
        identity: Identity,
        pin: &str,
        salt: [u8; 16],
        client_challenge: [u8; 16],
    ) -> (Self, PairRequest) {
        let request = PairRequest::GetServerCert {
            salt: hex_upper(&salt),
            client_cert: hex_upper(identity.cert.pem.as_bytes()),
        };
        (
            Self {
                key: pin_key(&salt, pin),
                identity,
                client_challenge,
                stage: ClientStage::AwaitServerCert,
            },
            request,
        )
    }

    /// Step 1's answer: `paired` and `plaincert`.
    pub fn on_server_cert(
        &mut self,
        paired: bool,
        plaincert: &str,
    ) -> Result<PairRequest, PairingError> {
        if !matches!(self.stage, ClientStage::AwaitServerCert) {
            return Err(PairingError::Malformed("out of order: server cert"));
        }
        if !paired || plaincert.is_empty() {
            self.stage = ClientStage::Done;
            return Err(PairingError::Refused);
        }
        let server_cert = PeerCert::from_pem(&unhex(plaincert, "plaincert")?)?;
        self.stage = ClientStage::AwaitChallengeResponse { server_cert };
        Ok(PairRequest::ClientChallenge(hex_upper(&ecb(
            &self.key,
            &self.client_challenge,
            true,
        )?)))
    }

    /// Step 2's answer: `challengeresponse`.
    pub fn on_challenge_response(
        &mut self,
        challenge_response: &str,
        client_secret: [u8; 16],
    ) -> Result<PairRequest, PairingError> {
        let ClientStage::AwaitChallengeResponse { server_cert } =
            std::mem::replace(&mut self.stage, ClientStage::Done)
        else {
            return Err(PairingError::Malformed("out of order: challenge response"));
        };
        let plain = ecb(
            &self.key,
            &unhex(challenge_response, "challengeresponse")?,
            false,
        )?;
        if plain.len() != 48 {
            return Err(PairingError::Malformed("challenge response length"));
        }
        let server_hash: [u8; 32] = plain[..32].try_into().expect("32");
        let server_challenge = &plain[32..48];
        let hash = sha256(&[
            server_challenge,
            self.identity.cert.signature(),
            &client_secret,
        ]);
        self.stage = ClientStage::AwaitPairingSecret {
            server_cert,
            server_hash,
            client_secret,
        };
        Ok(PairRequest::ServerChallengeResp(hex_upper(&ecb(
            &self.key, &hash, true,
        )?)))
    }

    /// Step 3's answer: `pairingsecret`. Detects a man in the middle and a
    /// host that does not know the PIN.
    pub fn on_pairing_secret(&mut self, pairing_secret: &str) -> Result<PairRequest, PairingError> {
        let ClientStage::AwaitPairingSecret {
            server_cert,
            server_hash,
            client_secret,
        } = std::mem::replace(&mut self.stage, ClientStage::Done)
        else {
            return Err(PairingError::Malformed("out of order: pairing secret"));
        };
        let bytes = unhex(pairing_secret, "pairingsecret")?;
        if bytes.len() <= 16 {
            return Err(PairingError::Malformed("pairing secret length"));
        }
        let (server_secret, signature) = bytes.split_at(16);
        if !server_cert.verify(server_secret, signature) {
            return Err(PairingError::ServerSignature);
        }
        let expected = sha256(&[
            &self.client_challenge,
            server_cert.signature(),
            server_secret,
        ]);
        if expected != server_hash {
            return Err(PairingError::WrongPin);
        }
        let mut out = client_secret.to_vec();
        out.extend_from_slice(&self.identity.sign(&client_secret));
        self.stage = ClientStage::AwaitPaired { server_cert };
        Ok(PairRequest::ClientPairingSecret(hex_upper(&out)))
    }

    /// Step 4's answer: `paired`. Returns the host certificate to pin.
    pub fn on_paired(&mut self, paired: bool) -> Result<PeerCert, PairingError> {
        let ClientStage::AwaitPaired { server_cert } =
            std::mem::replace(&mut self.stage, ClientStage::Done)
        else {
            return Err(PairingError::Malformed("out of order: paired"));
        };
        if paired {
            Ok(server_cert)
        } else {
            Err(PairingError::WrongPin)
        }
    }
}

#[derive(Debug)]
enum HostStage {
    AwaitClientChallenge,
    AwaitServerChallengeResp {
        server_secret: [u8; 16],
        server_challenge: [u8; 16],
    },
    AwaitClientPairingSecret {
        server_challenge: [u8; 16],
        client_hash: Vec<u8>,
    },
    Done,
}

/// Host side of pairing, one per pairing client.
#[derive(Debug)]
pub struct HostPairing {
    identity: Identity,
    key: [u8; 16],
    client_cert: PeerCert,
    stage: HostStage,
}

impl HostPairing {
    /// Step 1: from the client's `salt` and `clientcert`, with the PIN the
    /// user entered on the host. Returns the host and its `plaincert`.
    pub fn start(
        identity: Identity,
        pin: &str,
        salt: &str,
        client_cert: &str,
    ) -> Result<(Self, String), PairingError> {
        let salt: [u8; 16] = unhex(salt, "salt")?
            .try_into()
            .map_err(|_| PairingError::Malformed("salt length"))?;
        let client_cert = PeerCert::from_pem(&unhex(client_cert, "clientcert")?)?;
        let plaincert = hex_upper(identity.cert.pem.as_bytes());
        Ok((
            Self {
                key: pin_key(&salt, pin),
                identity,
                client_cert,
                stage: HostStage::AwaitClientChallenge,
            },
            plaincert,
        ))
    }

    /// Step 2: returns `challengeresponse`.
    pub fn on_client_challenge(
        &mut self,
        client_challenge: &str,
        server_secret: [u8; 16],
        server_challenge: [u8; 16],
    ) -> Result<String, PairingError> {
        if !matches!(self.stage, HostStage::AwaitClientChallenge) {
            return Err(PairingError::Malformed("out of order: client challenge"));
        }
        let challenge = ecb(
            &self.key,
            &unhex(client_challenge, "clientchallenge")?,
            false,
        )?;
        let hash = sha256(&[&challenge, self.identity.cert.signature(), &server_secret]);
        let mut plain = hash.to_vec();
        plain.extend_from_slice(&server_challenge);
        self.stage = HostStage::AwaitServerChallengeResp {
            server_secret,
            server_challenge,
        };
        Ok(hex_upper(&ecb(&self.key, &plain, true)?))
    }

    /// Step 3: returns `pairingsecret`.
    pub fn on_server_challenge_resp(&mut self, response: &str) -> Result<String, PairingError> {
        let HostStage::AwaitServerChallengeResp {
            server_secret,
            server_challenge,
        } = std::mem::replace(&mut self.stage, HostStage::Done)
        else {
            return Err(PairingError::Malformed(
                "out of order: server challenge response",
            ));
        };
        let client_hash = ecb(&self.key, &unhex(response, "serverchallengeresp")?, false)?;
        let mut out = server_secret.to_vec();
        out.extend_from_slice(&self.identity.sign(&server_secret));
        self.stage = HostStage::AwaitClientPairingSecret {
            server_challenge,
            client_hash,
        };
        Ok(hex_upper(&out))
    }

    /// The hash the client sent in step 3, decrypted (for known-answer tests).
    pub fn client_hash(&self) -> Option<&[u8]> {
        match &self.stage {
            HostStage::AwaitClientPairingSecret { client_hash, .. } => Some(client_hash),
            _ => None,
        }
    }

    /// Step 4: `Ok` with the client certificate to pin, when `paired=1`.
    pub fn on_client_pairing_secret(&mut self, secret: &str) -> Result<PeerCert, PairingError> {
        let HostStage::AwaitClientPairingSecret {
            server_challenge,
            client_hash,
        } = std::mem::replace(&mut self.stage, HostStage::Done)
        else {
            return Err(PairingError::Malformed(
                "out of order: client pairing secret",
            ));
        };
        let bytes = unhex(secret, "clientpairingsecret")?;
        if bytes.len() <= 16 {
            return Err(PairingError::Malformed("client pairing secret length"));
        }
        let (client_secret, signature) = bytes.split_at(16);
        let hash = sha256(&[
            &server_challenge,
            self.client_cert.signature(),
            client_secret,
        ]);
        if hash[..] != client_hash[..] {
            return Err(PairingError::WrongPin);
        }
        if !self.client_cert.verify(client_secret, signature) {
            return Err(PairingError::ClientSignature);
        }
        Ok(self.client_cert.clone())
    }
}

#[cfg(test)]
mod tests;
