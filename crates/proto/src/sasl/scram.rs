//! SCRAM-SHA-256 (RFC 5802, RFC 7677): message parsing, the server-first
//! and server-final messages, proof verification and key derivation. No I/O
//! and no randomness of its own: the server nonce comes from the caller and
//! the stored keys from the auth service.
//!
//! Passwords are used as their UTF-8 bytes without SASLprep (RFC 4013);
//! for ASCII passwords (every generated app password) that is the same.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::SaslError;

type HmacSha256 = Hmac<Sha256>;

/// RFC 7677 4: at least 4096 iterations.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Refuse stored iteration counts above this (a bad row must not stall AUTH).
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// What the server keeps for one password (RFC 5802 3). Never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .field("keys", &"<redacted>")
            .finish()
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; the error branch cannot happen.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Derives the stored keys for `password` (RFC 5802 3: SaltedPassword =
/// Hi(password, salt, i); StoredKey = H(HMAC(SaltedPassword, "Client Key"));
/// ServerKey = HMAC(SaltedPassword, "Server Key")).
pub fn derive_keys(password: &[u8], salt: &[u8], iterations: u32) -> ScramKeys {
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, salted.as_mut());
    let client_key = Zeroizing::new(hmac(salted.as_ref(), b"Client Key"));
    ScramKeys {
        salt: salt.to_vec(),
        iterations,
        stored_key: Sha256::digest(client_key.as_ref()).into(),
        server_key: hmac(salted.as_ref(), b"Server Key"),
    }
}

/// The channel-binding flag of the GS2 header (RFC 5802 7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelBinding {
    /// `n`: the client does not support channel binding.
    None,
    /// `y`: the client supports it but thinks the server does not.
    ClientOnly,
    /// `p=name`: the client requires this channel binding type.
    Required(String),
}

/// A parsed client-first-message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFirst {
    pub binding: ChannelBinding,
    pub authzid: Option<String>,
    pub username: String,
    pub client_nonce: String,
    /// The GS2 header as sent (echoed base64-encoded in `c=`).
    pub gs2_header: String,
    /// client-first-message-bare (part of the AuthMessage).
    pub bare: String,
}

/// RFC 5802 5.1: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).ok_or(SaslError::Malformed)?;
        out.push(match code {
            "2C" => ',',
            "3D" => '=',
            _ => return Err(SaslError::Malformed),
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() || out.len() > 255 {
        return Err(SaslError::Malformed);
    }
    Ok(out)
}

fn printable_nonce(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Parses the client-first-message (RFC 5802 7).
pub fn parse_client_first(message: &[u8]) -> Result<ClientFirst, SaslError> {
    let text = std::str::from_utf8(message).map_err(|_| SaslError::Malformed)?;
    let mut parts = text.splitn(3, ',');
    let (Some(flag), Some(authz), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::Malformed);
    };
    let binding = match flag {
        "n" => ChannelBinding::None,
        "y" => ChannelBinding::ClientOnly,
        _ => match flag.strip_prefix("p=") {
            Some(name) if !name.is_empty() => ChannelBinding::Required(name.to_owned()),
            _ => return Err(SaslError::Malformed),
        },
    };
    let authzid = match authz {
        "" => None,
        a => Some(decode_saslname(
            a.strip_prefix("a=").ok_or(SaslError::Malformed)?,
        )?),
    };
    let mut fields = bare.split(',');
    let first = fields.next().ok_or(SaslError::Malformed)?;
    if first.starts_with("m=") {
        // Mandatory extensions we do not know must fail (RFC 5802 5.1).
        return Err(SaslError::Malformed);
    }
    let username = decode_saslname(first.strip_prefix("n=").ok_or(SaslError::Malformed)?)?;
    let nonce = fields
        .next()
        .and_then(|f| f.strip_prefix("r="))
        .ok_or(SaslError::Malformed)?;
    if !printable_nonce(nonce) {
        return Err(SaslError::Malformed);
    }
    Ok(ClientFirst {
        binding,
        authzid,
        username,
        client_nonce: nonce.to_owned(),
        gs2_header: format!("{flag},{authz},"),
        bare: bare.to_owned(),
    })
}

/// The server-first-message: `r=<client nonce><server nonce>,s=<salt>,i=<n>`.
pub fn server_first(
    client_nonce: &str,
    server_nonce: &str,
    salt: &[u8],
    iterations: u32,
) -> String {
    format!(
        "r={client_nonce}{server_nonce},s={},i={iterations}",
        STANDARD.encode(salt),
    )
}

/// A parsed client-final-message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFinal {
    /// The decoded `c=` value (GS2 header plus any channel-binding data).
    pub channel_binding: Vec<u8>,
    pub nonce: String,
    pub proof: [u8; 32],
    /// client-final-message-without-proof (part of the AuthMessage).
    pub without_proof: String,
}

/// Parses the client-final-message (RFC 5802 7).
pub fn parse_client_final(message: &[u8]) -> Result<ClientFinal, SaslError> {
    let text = std::str::from_utf8(message).map_err(|_| SaslError::Malformed)?;
    let (without_proof, proof) = text.rsplit_once(",p=").ok_or(SaslError::Malformed)?;
    let mut fields = without_proof.split(',');
    let cb = fields
        .next()
        .and_then(|f| f.strip_prefix("c="))
        .ok_or(SaslError::Malformed)?;
    let nonce = fields
        .next()
        .and_then(|f| f.strip_prefix("r="))
        .ok_or(SaslError::Malformed)?;
    let channel_binding = STANDARD.decode(cb).map_err(|_| SaslError::Malformed)?;
    let proof: [u8; 32] = STANDARD
        .decode(proof)
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or(SaslError::Malformed)?;
    Ok(ClientFinal {
        channel_binding,
        nonce: nonce.to_owned(),
        proof,
        without_proof: without_proof.to_owned(),
    })
}

/// AuthMessage = client-first-message-bare "," server-first-message ","
/// client-final-message-without-proof (RFC 5802 3).
pub fn auth_message(first_bare: &str, server_first: &str, final_without_proof: &str) -> String {
    format!("{first_bare},{server_first},{final_without_proof}")
}

/// Whether `proof` proves knowledge of the password behind `keys`:
/// ClientKey = proof XOR HMAC(StoredKey, AuthMessage), and H(ClientKey) must
/// equal StoredKey (compared in constant time).
pub fn verify_proof(keys: &ScramKeys, auth_message: &str, proof: &[u8; 32]) -> bool {
    let signature = hmac(&keys.stored_key, auth_message.as_bytes());
    let mut client_key = Zeroizing::new([0u8; 32]);
    for (i, b) in client_key.iter_mut().enumerate() {
        *b = proof[i] ^ signature[i];
    }
    let computed: [u8; 32] = Sha256::digest(client_key.as_ref()).into();
    computed.ct_eq(&keys.stored_key).into()
}

/// The server-final-message on success: `v=<ServerSignature>`.
pub fn server_final(keys: &ScramKeys, auth_message: &str) -> String {
    format!(
        "v={}",
        STANDARD.encode(hmac(&keys.server_key, auth_message.as_bytes()))
    )
}

/// The client side of the exchange (for tests and the connection tester):
/// the proof for `password` over `auth_message`.
pub fn client_proof(keys_for_password: &ClientKeys, auth_message: &str) -> [u8; 32] {
    let signature = hmac(&keys_for_password.stored_key, auth_message.as_bytes());
    let mut proof = [0u8; 32];
    for (i, b) in proof.iter_mut().enumerate() {
        *b = keys_for_password.client_key[i] ^ signature[i];
    }
    proof
}

/// What a client derives from its password.
pub struct ClientKeys {
    pub client_key: Zeroizing<[u8; 32]>,
    pub stored_key: [u8; 32],
}

/// The client's keys for `password` (see [`client_proof`]).
pub fn client_keys(password: &[u8], salt: &[u8], iterations: u32) -> ClientKeys {
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, salted.as_mut());
    let client_key = Zeroizing::new(hmac(salted.as_ref(), b"Client Key"));
    ClientKeys {
        stored_key: Sha256::digest(client_key.as_ref()).into(),
        client_key,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // RFC 7677 3: user "user", password "pencil".
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    #[test]
    fn rfc7677_example() {
        let first = parse_client_first(CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(first.username, "user");
        assert_eq!(first.binding, ChannelBinding::None);
        assert_eq!(first.gs2_header, "n,,");
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = derive_keys(b"pencil", &salt, 4096);
        let sf = server_first(
            &first.client_nonce,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            &keys.salt,
            keys.iterations,
        );
        assert_eq!(sf, SERVER_FIRST);
        let fin = parse_client_final(CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(fin.channel_binding, b"n,,");
        let am = auth_message(&first.bare, &sf, &fin.without_proof);
        assert!(verify_proof(&keys, &am, &fin.proof));
        assert_eq!(server_final(&keys, &am), SERVER_FINAL);
        let wrong = derive_keys(b"pencil2", &salt, 4096);
        assert!(!verify_proof(&wrong, &am, &fin.proof));
        let ck = client_keys(b"pencil", &salt, 4096);
        assert_eq!(client_proof(&ck, &am), fin.proof);
    }

    #[test]
    fn client_first_variants() {
        let f = parse_client_first(b"y,a=al=2Cice,n=b=3Dob,r=abc,ext=1").unwrap();
        assert_eq!(f.binding, ChannelBinding::ClientOnly);
        assert_eq!(f.authzid.as_deref(), Some("al,ice"));
        assert_eq!(f.username, "b=ob");
        let f = parse_client_first(b"p=tls-exporter,,n=u,r=abc").unwrap();
        assert_eq!(f.binding, ChannelBinding::Required("tls-exporter".into()));
        for bad in [
            &b"n,,n=u"[..],
            b"x,,n=u,r=a",
            b"n,,m=ext,n=u,r=a",
            b"n,,n=,r=a",
            b"n,,n=u=2X,r=a",
            b"n,,n=u,r=",
            b"n,b=x,n=u,r=a",
            b"n,,n=u,r=a\x01",
        ] {
            assert_eq!(
                parse_client_first(bad),
                Err(SaslError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn client_final_malformed() {
        for bad in [
            &b"c=biws,r=abc"[..],
            b"c=biws,r=abc,p=short",
            b"r=abc,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            b"c=!!,r=abc,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        ] {
            assert_eq!(
                parse_client_final(bad),
                Err(SaslError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keys_never_print() {
        let keys = derive_keys(b"pencil", b"salt", 4096);
        assert!(!format!("{keys:?}").contains(&format!("{:?}", keys.stored_key)));
    }
}
