//! Audio stream: RTP with Opus (payload type 97), its FEC (payload type 127)
//! and AES-128-CBC encryption.
//!
//! Hosts send each Opus packet as a 12-byte RTP header (0x80, 97, seq BE,
//! timestamp BE, ssrc) and the payload; when audio encryption is on, the
//! payload is AES-128-CBC with PKCS#7 padding under the session's `rikey`,
//! IV = `rikeyid + seq` (u32 BE) followed by 12 zero bytes. After every 4
//! data packets (sequence numbers `4k..4k+3`) come 2 FEC packets: RTP header
//! (payload type 127), then `shard index, payload type (97), base seq (BE16),
//! base timestamp (BE32), ssrc (BE32)`, then parity over the 4 (encrypted)
//! payloads with the fixed audio matrix ([`crate::fec::ReedSolomon::audio`]).
//! Opus in CBR mode keeps every payload of a block the same length, which
//! the code requires.
//!
//! [`AudioReceiver`] hands out each payload as it arrives and recovers up to
//! two lost payloads of a block once four of its six shards are in; it does
//! not reorder (each [`AudioPacket`] carries its sequence number).

use std::collections::BTreeMap;

use aes::Aes128;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use thiserror::Error;

use crate::fec::ReedSolomon;
use crate::video::RtpHeader;

pub const PAYLOAD_TYPE_OPUS: u8 = 97;
pub const PAYLOAD_TYPE_FEC: u8 = 127;
pub const DATA_SHARDS: usize = 4;
pub const FEC_SHARDS: usize = 2;
const RTP_LEN: usize = 12;
const FEC_HEADER_LEN: usize = 12;

/// Audio encryption: the session's key and key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioKey {
    pub key: [u8; 16],
    pub key_id: u32,
}

impl AudioKey {
    fn iv(&self, seq: u16) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..4].copy_from_slice(&self.key_id.wrapping_add(u32::from(seq)).to_be_bytes());
        iv
    }
    pub fn encrypt(&self, seq: u16, plain: &[u8]) -> Vec<u8> {
        cbc::Encryptor::<Aes128>::new(&self.key.into(), &self.iv(seq).into())
            .encrypt_padded_vec_mut::<Pkcs7>(plain)
    }
    pub fn decrypt(&self, seq: u16, cipher: &[u8]) -> Result<Vec<u8>, AudioError> {
        cbc::Decryptor::<Aes128>::new(&self.key.into(), &self.iv(seq).into())
            .decrypt_padded_vec_mut::<Pkcs7>(cipher)
            .map_err(|_| AudioError::Decrypt)
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AudioError {
    #[error("audio datagram of {0} bytes is too short")]
    TooShort(usize),
    #[error("unexpected RTP payload type {0}")]
    PayloadType(u8),
    #[error("audio payload failed AES-CBC decryption")]
    Decrypt,
    #[error("audio FEC shard index {0} out of range")]
    FecIndex(u8),
}

/// One Opus packet, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPacket {
    pub sequence: u16,
    pub timestamp: u32,
    pub opus: Vec<u8>,
    /// Rebuilt from FEC rather than received.
    pub recovered: bool,
}

/// Host side: RTP + FEC packets for a stream of Opus packets.
pub struct AudioPacketizer {
    key: Option<AudioKey>,
    sequence: u16,
    timestamp: u32,
    /// Milliseconds per packet (`x-nv-aqos.packetDuration`), RTP clock in ms as hosts use.
    packet_duration: u32,
    block: Vec<Vec<u8>>,
    block_base: (u16, u32),
    rs: ReedSolomon,
}

impl AudioPacketizer {
    pub fn new(key: Option<AudioKey>, packet_duration: u32) -> Self {
        Self {
            key,
            sequence: 0,
            timestamp: 0,
            packet_duration,
            block: Vec::new(),
            block_base: (0, 0),
            rs: ReedSolomon::audio(),
        }
    }

    /// Datagrams for one Opus packet: the data packet, then 2 FEC packets
    /// after every fourth.
    pub fn packetize(&mut self, opus: &[u8]) -> Vec<Vec<u8>> {
        let seq = self.sequence;
        let ts = self.timestamp;
        let payload = match &self.key {
            Some(k) => k.encrypt(seq, opus),
            None => opus.to_vec(),
        };
        let mut out = Vec::new();
        let mut pkt = vec![0u8; RTP_LEN];
        RtpHeader {
            header: 0x80,
            payload_type: PAYLOAD_TYPE_OPUS,
            sequence: seq,
            timestamp: ts,
            ssrc: 0,
        }
        .write(&mut pkt);
        pkt.extend_from_slice(&payload);
        out.push(pkt);
        if seq as usize % DATA_SHARDS == 0 {
            self.block.clear();
            self.block_base = (seq, ts);
        }
        self.block.push(payload);
        if (seq as usize + 1) % DATA_SHARDS == 0 && self.block.len() == DATA_SHARDS {
            let len = self.block.iter().map(Vec::len).max().unwrap_or(0);
            let shards: Vec<Vec<u8>> = self
                .block
                .iter()
                .map(|s| {
                    let mut s = s.clone();
                    s.resize(len, 0);
                    s
                })
                .collect();
            let parity = self.rs.encode(&shards).expect("4 equal shards");
            for (x, p) in parity.into_iter().enumerate() {
                let mut pkt = vec![0u8; RTP_LEN + FEC_HEADER_LEN];
                RtpHeader {
                    header: 0x80,
                    payload_type: PAYLOAD_TYPE_FEC,
                    sequence: seq.wrapping_add(x as u16 + 1),
                    timestamp: 0,
                    ssrc: 0,
                }
                .write(&mut pkt);
                pkt[12] = x as u8;
                pkt[13] = PAYLOAD_TYPE_OPUS;
                pkt[14..16].copy_from_slice(&self.block_base.0.to_be_bytes());
                pkt[16..20].copy_from_slice(&self.block_base.1.to_be_bytes());
                pkt.extend_from_slice(&p);
                out.push(pkt);
            }
        }
        self.sequence = seq.wrapping_add(1);
        self.timestamp = ts.wrapping_add(self.packet_duration);
        out
    }
}

#[derive(Debug, Default)]
struct AudioBlock {
    base_ts: Option<u32>,
    shards: [Option<Vec<u8>>; DATA_SHARDS + FEC_SHARDS],
    delivered: [bool; DATA_SHARDS],
    done: bool,
}

/// Client side: decrypts and recovers audio packets.
pub struct AudioReceiver {
    key: Option<AudioKey>,
    rs: ReedSolomon,
    packet_duration: u32,
    blocks: BTreeMap<u16, AudioBlock>,
    recovered: u64,
}

/// Blocks kept for late shards.
const KEPT_BLOCKS: usize = 8;

impl AudioReceiver {
    pub fn new(key: Option<AudioKey>, packet_duration: u32) -> Self {
        Self {
            key,
            rs: ReedSolomon::audio(),
            packet_duration,
            blocks: BTreeMap::new(),
            recovered: 0,
        }
    }

    pub fn recovered(&self) -> u64 {
        self.recovered
    }

    /// Takes one datagram; returns the Opus packets it makes available.
    pub fn push(&mut self, datagram: &[u8]) -> Result<Vec<AudioPacket>, AudioError> {
        let rtp = RtpHeader::parse(datagram).ok_or(AudioError::TooShort(datagram.len()))?;
        let mut out = Vec::new();
        let (base, slot) = match rtp.payload_type {
            PAYLOAD_TYPE_OPUS => {
                let base = rtp.sequence - rtp.sequence % DATA_SHARDS as u16;
                let slot = usize::from(rtp.sequence - base);
                let payload = datagram[RTP_LEN..].to_vec();
                let block = self.blocks.entry(base).or_default();
                if block.delivered[slot] {
                    return Ok(out);
                }
                block.delivered[slot] = true;
                block.base_ts.get_or_insert(
                    rtp.timestamp
                        .wrapping_sub(slot as u32 * self.packet_duration),
                );
                out.push(AudioPacket {
                    sequence: rtp.sequence,
                    timestamp: rtp.timestamp,
                    opus: self.open(rtp.sequence, &payload)?,
                    recovered: false,
                });
                (base, slot)
            }
            PAYLOAD_TYPE_FEC => {
                if datagram.len() < RTP_LEN + FEC_HEADER_LEN {
                    return Err(AudioError::TooShort(datagram.len()));
                }
                let index = datagram[12];
                if usize::from(index) >= FEC_SHARDS {
                    return Err(AudioError::FecIndex(index));
                }
                let base = u16::from_be_bytes([datagram[14], datagram[15]]);
                let ts =
                    u32::from_be_bytes([datagram[16], datagram[17], datagram[18], datagram[19]]);
                self.blocks.entry(base).or_default().base_ts = Some(ts);
                (base, DATA_SHARDS + usize::from(index))
            }
            other => return Err(AudioError::PayloadType(other)),
        };
        let payload_start = if slot < DATA_SHARDS {
            RTP_LEN
        } else {
            RTP_LEN + FEC_HEADER_LEN
        };
        let block = self.blocks.get_mut(&base).expect("inserted above");
        if block.shards[slot].is_none() {
            block.shards[slot] = Some(datagram[payload_start..].to_vec());
        }
        let have = block.shards.iter().filter(|s| s.is_some()).count();
        let missing_data = block.delivered.iter().filter(|d| !**d).count();
        if !block.done && missing_data > 0 && have >= DATA_SHARDS {
            let mut shards: Vec<Option<Vec<u8>>> = block.shards.to_vec();
            let len = shards.iter().flatten().map(Vec::len).max().unwrap_or(0);
            let same_len = shards.iter().flatten().all(|s| s.len() == len);
            if same_len && self.rs.reconstruct(&mut shards).is_ok() {
                block.done = true;
                let base_ts = block.base_ts.unwrap_or(0);
                let mut recovered = Vec::new();
                for (i, shard) in shards.into_iter().take(DATA_SHARDS).enumerate() {
                    if !block.delivered[i] {
                        block.delivered[i] = true;
                        recovered.push((i, shard.unwrap_or_default()));
                    }
                }
                for (i, payload) in recovered {
                    let seq = base.wrapping_add(i as u16);
                    self.recovered += 1;
                    out.push(AudioPacket {
                        sequence: seq,
                        timestamp: base_ts.wrapping_add(i as u32 * self.packet_duration),
                        opus: self.open(seq, &payload)?,
                        recovered: true,
                    });
                }
            }
        }
        while self.blocks.len() > KEPT_BLOCKS {
            self.blocks.pop_first();
        }
        Ok(out)
    }

    fn open(&self, seq: u16, payload: &[u8]) -> Result<Vec<u8>, AudioError> {
        match &self.key {
            Some(k) => k.decrypt(seq, payload),
            None => Ok(payload.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netsim::SimRng;

    fn opus_packets(n: usize, len: usize) -> Vec<Vec<u8>> {
        let mut rng = SimRng::new(42);
        (0..n)
            .map(|_| (0..len).map(|_| rng.next_u64() as u8).collect())
            .collect()
    }

    #[test]
    fn data_and_fec_packet_layouts_match_sunshine() {
        let mut p = AudioPacketizer::new(None, 5);
        let packets = opus_packets(4, 20);
        let mut out = Vec::new();
        for o in &packets {
            out.extend(p.packetize(o));
        }
        assert_eq!(out.len(), 6);
        assert_eq!(hex::encode(&out[1][..12]), "806100010000000500000000");
        assert_eq!(&out[1][12..], &packets[1][..]);
        // FEC: RTP PT 127, seq 4 (last data seq + 1), then index 0, PT 97,
        // base seq 0, base timestamp 0, ssrc 0.
        assert_eq!(
            hex::encode(&out[4][..24]),
            "807f000400000000000000000061000000000000".to_string() + "00000000"
        );
        assert_eq!(out[5][12], 1);
    }

    #[test]
    fn cbc_iv_is_key_id_plus_sequence_big_endian() {
        let k = AudioKey {
            key: [1; 16],
            key_id: 0x0102_0304,
        };
        assert_eq!(
            hex::encode(k.iv(0x0100)),
            "01020404000000000000000000000000"
        );
        let c = k.encrypt(7, b"opus");
        assert_eq!(c.len(), 16);
        assert_eq!(k.decrypt(7, &c).unwrap(), b"opus");
        assert!(k.decrypt(8, &c).is_err() || k.decrypt(8, &c).unwrap() != b"opus");
    }

    #[test]
    fn encrypted_audio_survives_loss_of_any_two_packets_per_block() {
        let key = Some(AudioKey {
            key: [3; 16],
            key_id: 77,
        });
        let packets = opus_packets(40, 60);
        let mut host = AudioPacketizer::new(key, 5);
        let mut client = AudioReceiver::new(key, 5);
        let mut rng = SimRng::new(9);
        let mut got = BTreeMap::new();
        let mut datagrams: Vec<Vec<u8>> = Vec::new();
        for o in &packets {
            datagrams.extend(host.packetize(o));
        }
        for block in datagrams.chunks(6) {
            // Drop two of six, chosen by the seed.
            let a = (rng.next_u64() % 6) as usize;
            let b = (a + 1 + (rng.next_u64() % 5) as usize) % 6;
            for (i, d) in block.iter().enumerate() {
                if i == a || i == b {
                    continue;
                }
                for pkt in client.push(d).unwrap() {
                    assert!(got.insert(pkt.sequence, pkt.opus).is_none(), "once each");
                }
            }
        }
        assert!(client.recovered() > 0);
        assert_eq!(got.len(), 40);
        for (seq, opus) in got {
            assert_eq!(opus, packets[seq as usize]);
        }
    }
}
