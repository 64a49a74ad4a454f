use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;

#[path = "wolf_vectors.rs"]
mod wolf;

fn unhex16(s: &str) -> [u8; 16] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn wolf_host() -> Identity {
    Identity::from_pem(wolf::SERVER_CERT, wolf::SERVER_PKEY).unwrap()
}

/// Three identities (client, host, impostor), generated once per test binary
/// from a fixed seed.
fn identities() -> &'static [Identity; 3] {
    static IDS: OnceLock<[Identity; 3]> = OnceLock::new();
    IDS.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(26);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        [
            Identity::generate(&mut rng, "NVIDIA GameStream Client", t).unwrap(),
            Identity::generate(&mut rng, "Sunshine Gamestream Host", t).unwrap(),
            Identity::generate(&mut rng, "Impostor", t).unwrap(),
        ]
    })
}

#[test]
fn wolf_run_pin_key() {
    assert_eq!(
        hex::encode_upper(pin_key(&unhex16(wolf::SALT), wolf::PIN)),
        "8A0191F59F31950D5DE3396901AA585D"
    );
}

/// Replays the host side of Wolf's recorded run: Moonlight's messages in,
/// Wolf's answers out, byte for byte (the host secret and challenge are the
/// values Wolf's test fixes, AB7D…5A for both).
#[test]
fn wolf_run_host_side_byte_for_byte() {
    let secret = unhex16("AB7D178785415C893A6757C1B736105A");
    let (mut host, plaincert) =
        HostPairing::start(wolf_host(), wolf::PIN, wolf::SALT, wolf::CLIENT_CERT_HEX).unwrap();
    assert_eq!(
        hex::decode(plaincert).unwrap(),
        wolf::SERVER_CERT.as_bytes()
    );
    let challenge_response = host
        .on_client_challenge(wolf::CLIENT_CHALLENGE, secret, secret)
        .unwrap();
    assert_eq!(
        challenge_response,
        "2A86F54B35997EAE9CC30D3F06E66D93178FB7892180FEE2B4BBB8C68473BDE13401EFE6604815200DE9BEA7D2215FC4"
    );
    let pairing_secret = host
        .on_server_challenge_resp(wolf::SERVER_CHALLENGE_RESP)
        .unwrap();
    assert_eq!(
        hex::encode_upper(host.client_hash().unwrap()),
        "3875FFF759355205355EFE5D3065CD776A06A806CAAE0CEFAEF22475D593CEA4"
    );
    assert_eq!(
        pairing_secret,
        "AB7D178785415C893A6757C1B736105A9D9B953D2D5DE21B5CA8483FFF677223A2C5E625510E16C6AA28B05E58B3EADC7D77EA32EE3684C4\
1C735D4F42B2FE2B5A4498988CAF01E1DFC42E801F19D8F8417CA4EFA3144E9972B948B451309F045E1C678330065D46E6C8260AD720663A\
FFC8DF985D8E5AB4D74CCEA266ED6A227C9F61BACF0968925A327368367EB5CF9507D21B85A3AB9F782A6DB927A013C6FD1C6201BFCE480D\
29BDCE706389AB4A735B5115F1E42A19FFB735617DD7EF2B46558DACDF352F33564C663E84D130F3FCBB81BC5CC125E3F772472F9A0350C1\
0D6B9B5ECEFE177514E8AF496E1E210FBC03571DDB222B3AA97E76BE5A7D7731756CFE3B1202237D38433F789F87B3FA"
    );
    // Moonlight's final message verifies: its hash and its signature hold.
    let client = host
        .on_client_pairing_secret(wolf::CLIENT_PAIRING_SECRET)
        .unwrap();
    assert_eq!(
        client.pem().as_bytes(),
        hex::decode(wolf::CLIENT_CERT_HEX).unwrap()
    );
}

#[test]
fn wolf_run_with_a_wrong_pin_is_refused_at_the_last_step() {
    let secret = unhex16("AB7D178785415C893A6757C1B736105A");
    let (mut host, _) =
        HostPairing::start(wolf_host(), "7285", wolf::SALT, wolf::CLIENT_CERT_HEX).unwrap();
    host.on_client_challenge(wolf::CLIENT_CHALLENGE, secret, secret)
        .unwrap();
    host.on_server_challenge_resp(wolf::SERVER_CHALLENGE_RESP)
        .unwrap();
    assert_eq!(
        host.on_client_pairing_secret(wolf::CLIENT_PAIRING_SECRET),
        Err(PairingError::WrongPin)
    );
}

struct Outcome {
    client: Result<PeerCert, PairingError>,
    host: Option<Result<PeerCert, PairingError>>,
}

/// Runs our client core against our host core. `presented` is the
/// certificate the host sends in step 1 (a man in the middle swaps it).
fn pair(
    client_pin: &str,
    host_pin: &str,
    host: &Identity,
    presented: Option<&Identity>,
) -> Outcome {
    let [client_id, _, _] = identities();
    let (mut client, req) = ClientPairing::start(client_id.clone(), client_pin, [1; 16], [2; 16]);
    let PairRequest::GetServerCert { salt, client_cert } = req else {
        panic!("{req:?}")
    };
    let (mut h, mut plaincert) =
        HostPairing::start(host.clone(), host_pin, &salt, &client_cert).unwrap();
    if let Some(p) = presented {
        plaincert = hex::encode(p.cert().pem());
    }
    let step = |r: Result<PairRequest, PairingError>| {
        r.map(|r| match r {
            PairRequest::ClientChallenge(s)
            | PairRequest::ServerChallengeResp(s)
            | PairRequest::ClientPairingSecret(s) => s,
            other => panic!("{other:?}"),
        })
    };
    let challenge = step(client.on_server_cert(true, &plaincert)).unwrap();
    let response = h.on_client_challenge(&challenge, [3; 16], [4; 16]).unwrap();
    let resp = step(client.on_challenge_response(&response, [5; 16])).unwrap();
    let secret = h.on_server_challenge_resp(&resp).unwrap();
    let final_msg = match step(client.on_pairing_secret(&secret)) {
        Ok(m) => m,
        Err(e) => {
            return Outcome {
                client: Err(e),
                host: None,
            }
        }
    };
    let host_result = h.on_client_pairing_secret(&final_msg);
    let client_result = client.on_paired(host_result.is_ok());
    Outcome {
        client: client_result,
        host: Some(host_result),
    }
}

#[test]
fn client_core_pairs_with_host_core_and_each_pins_the_other() {
    let [client_id, host_id, _] = identities();
    let out = pair("1234", "1234", host_id, None);
    assert_eq!(out.client.unwrap().der(), host_id.cert().der());
    assert_eq!(out.host.unwrap().unwrap().der(), client_id.cert().der());
}

#[test]
fn a_wrong_pin_is_refused() {
    let [_, host_id, _] = identities();
    let out = pair("1234", "4321", host_id, None);
    // The host's hash, made with another key, does not check out at the
    // client, which stops before revealing its secret.
    assert_eq!(out.client.unwrap_err(), PairingError::WrongPin);
    assert!(out.host.is_none());
}

#[test]
fn a_man_in_the_middle_certificate_is_refused() {
    let [_, host_id, impostor] = identities();
    // The host presents the impostor's certificate but signs with its own key
    // (or: a relay swapped the certificate in transit).
    let out = pair("1234", "1234", host_id, Some(impostor));
    assert_eq!(out.client.unwrap_err(), PairingError::ServerSignature);
    assert!(out.host.is_none());
}

#[test]
fn a_busy_host_refusing_step_one_is_a_refusal() {
    let [client_id, _, _] = identities();
    let (mut client, _) = ClientPairing::start(client_id.clone(), "1234", [1; 16], [2; 16]);
    assert_eq!(client.on_server_cert(false, ""), Err(PairingError::Refused));
}

#[test]
fn generated_identity_is_a_self_signed_rsa_2048_certificate() {
    let [client_id, _, _] = identities();
    let cert = Certificate::from_der(client_id.cert().der()).unwrap();
    let tbs = &cert.tbs_certificate;
    assert_eq!(tbs.subject, tbs.issuer);
    assert_eq!(tbs.subject.to_string(), "CN=NVIDIA GameStream Client");
    assert_eq!(client_id.cert().signature().len(), 256);
    // The certificate's signature verifies under its own key.
    let tbs_der = tbs.to_der().unwrap();
    assert!(client_id
        .cert()
        .verify(&tbs_der, client_id.cert().signature()));
    // PEM round trip of the key.
    let back = Identity::from_pem(client_id.cert().pem(), &client_id.key_pem()).unwrap();
    assert_eq!(back.cert().der(), client_id.cert().der());
}

#[test]
fn steps_out_of_order_are_errors() {
    let [client_id, host_id, _] = identities();
    let (mut client, req) = ClientPairing::start(client_id.clone(), "1", [0; 16], [0; 16]);
    assert!(matches!(
        client.on_pairing_secret("00"),
        Err(PairingError::Malformed(_))
    ));
    let PairRequest::GetServerCert { salt, client_cert } = req else {
        panic!()
    };
    let (mut h, _) = HostPairing::start(host_id.clone(), "1", &salt, &client_cert).unwrap();
    assert!(matches!(
        h.on_client_pairing_secret("00"),
        Err(PairingError::Malformed(_))
    ));
}
