use webrtc::srtp::context::Context;
use webrtc::srtp::protection_profile::ProtectionProfile;

use super::*;

const PROFILES: [ProtectionProfile; 2] = [
    ProtectionProfile::Aes128CmHmacSha1_80,
    ProtectionProfile::AeadAes128Gcm,
];

fn keys(profile: ProtectionProfile) -> (Vec<u8>, Vec<u8>) {
    let key = b"0123456789abcdef".to_vec();
    let salt = b"saltsaltsaltsa"[..profile.salt_len()].to_vec();
    (key, salt)
}

fn sealer(profile: ProtectionProfile) -> RtpSealer {
    let (key, salt) = keys(profile);
    RtpSealer::new(profile, &key, &salt)
        .unwrap()
        .expect("sealed in place")
}

fn context(profile: ProtectionProfile) -> Context {
    let (key, salt) = keys(profile);
    Context::new(&key, &salt, profile, None, None).unwrap()
}

/// A plain RTP packet (12-byte header) numbered `seq`.
fn rtp(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x80 | 102];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..payload_len).map(|i| (i * 7 + usize::from(seq)) as u8));
    p
}

#[test]
fn sealing_in_place_gives_webrtc_srtps_bytes_across_a_sequence_wrap() {
    for profile in PROFILES {
        let ours = sealer(profile);
        let mut theirs = context(profile);
        let mut roc = 0u32;
        let mut seq = 65_530u16;
        for i in 0..12 {
            let plain = rtp(seq, 0xdead_beef, 100 + i * 97);
            // Sealed after whatever the buffer already holds, as in an outbox.
            let mut buf = vec![0xaa; 7];
            buf.extend_from_slice(&plain);
            ours.seal(&mut buf, 7, 12, roc);
            assert_eq!(&buf[..7], &[0xaa; 7], "bytes before the packet untouched");
            let expected = theirs.encrypt_rtp(&plain).unwrap();
            assert_eq!(
                &buf[7..],
                &expected[..],
                "{profile:?}: packet {i}, seq {seq}, roc {roc}"
            );
            assert_eq!(buf.len() - 7, plain.len() + ours.tag_len());
            seq = seq.wrapping_add(1);
            if seq == 0 {
                roc += 1;
            }
        }
        assert_eq!(roc, 1, "the test crossed the wrap");
    }
}

#[test]
fn a_receiver_with_the_same_keys_decrypts_and_rejects_a_wrong_rollover_count() {
    for profile in PROFILES {
        let ours = sealer(profile);
        let plain = rtp(40, 7, 1188);
        let mut sealed = plain.clone();
        ours.seal(&mut sealed, 0, 12, 0);
        assert_ne!(
            &sealed[12..plain.len()],
            &plain[12..],
            "the payload is encrypted"
        );
        assert_eq!(&sealed[..12], &plain[..12], "the header stays clear");
        let opened = context(profile).decrypt_rtp(&sealed).expect("decrypts");
        assert_eq!(&opened[..], &plain[..], "{profile:?}");

        // The same packet sealed as if the sequence had wrapped once
        // before: another key stream and tag, which a receiver at rollover
        // 0 rejects.
        let mut wrong = plain.clone();
        ours.seal(&mut wrong, 0, 12, 1);
        assert_ne!(wrong, sealed);
        assert!(context(profile).decrypt_rtp(&wrong).is_err(), "{profile:?}");
    }
}

#[test]
fn keys_of_the_wrong_length_are_refused_and_other_profiles_left_to_webrtc_srtp() {
    let e = RtpSealer::new(ProtectionProfile::AeadAes128Gcm, &[0; 15], &[0; 12])
        .err()
        .expect("short key refused");
    assert_eq!((e.key, e.salt), (15, 12));
    assert!(
        RtpSealer::new(ProtectionProfile::AeadAes128Gcm, &[0; 16], &[0; 14]).is_err(),
        "a 14-byte salt is AES-CM's"
    );
    assert!(
        RtpSealer::new(ProtectionProfile::Aes128CmHmacSha1_80, &[0; 16], &[0; 12]).is_err(),
        "a 12-byte salt is GCM's"
    );
    let other = RtpSealer::new(ProtectionProfile::Aes128CmHmacSha1_32, &[0; 16], &[0; 14]);
    assert!(matches!(other, Ok(None)));
}
