//! Client-side encryption of what a repository stores: AES-256-GCM in the STREAM
//! construction (RustCrypto `aead::stream`, a 7-byte random nonce prefix, a big-endian
//! 32-bit chunk counter and a last-chunk flag), so an object is encrypted and checked
//! chunk by chunk in bounded memory, and an altered, reordered, truncated or extended
//! object fails authentication.
//!
//! An object: `MAGIC` (8 bytes) | key id (8 bytes) | nonce prefix (7 bytes) | chunks of
//! `CHUNK` plaintext bytes, each followed by its 16-byte tag; the last chunk (possibly
//! empty) is sealed as the last. The header and the object's path within its backup
//! are the associated data of every chunk: an object cannot pass for another.

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::{OsRng, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// The scheme the manifest records.
pub const SCHEME: &str = "aes-256-gcm-stream-64k";
/// What an encrypted object's path ends with in the repository.
pub const SUFFIX: &str = ".enc";
/// Plaintext bytes per chunk.
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const MAGIC: &[u8; 8] = b"STGHENC1";
const ID_LEN: usize = 8;
const NONCE_PREFIX: usize = 7;
const HEADER: usize = MAGIC.len() + ID_LEN + NONCE_PREFIX;

/// A repository key: 32 bytes. Its `Debug` shows the id only, never the key.
pub struct Key {
    cipher: Aes256Gcm,
    id: [u8; ID_LEN],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

impl Key {
    /// A key written as 64 hex digits (surrounding whitespace ignored); `source` names
    /// where it came from in errors (never the key itself).
    pub fn from_hex(text: &str, source: &str) -> Result<Key, CryptError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| CryptError::BadKey {
            origin: source.to_string(),
        })?;
        Ok(Key::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8; 32]) -> Key {
        // The id is a hash of the key under its own label: it names the key, and tells
        // nothing about it (the key is 32 random bytes).
        let digest = Sha256::new()
            .chain_update(b"stagehand repository key id v1\0")
            .chain_update(bytes)
            .finalize();
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&digest[..ID_LEN]);
        Key {
            cipher: Aes256Gcm::new(GenericArray::from_slice(bytes)),
            id,
        }
    }

    /// Reads a key file (64 hex digits).
    pub fn from_file(path: &std::path::Path) -> Result<Key, CryptError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CryptError::KeyFile {
            path: shown.clone(),
            source: e,
        })?;
        Key::from_hex(&text, &format!("key file {shown}"))
    }

    /// The key's id: 16 hex digits, safe to show anywhere.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }
}

/// What can go wrong encrypting or decrypting. Messages never hold a key.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("{origin}: an encryption key is 64 hex digits (32 random bytes, e.g. from `openssl rand -hex 32`)")]
    BadKey { origin: String },
    #[error("key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an object encrypted by stagehand")]
    NotEncrypted { path: String },
    #[error("{path} is encrypted with key {needed}, the key given is {given}")]
    WrongKey {
        path: String,
        needed: String,
        given: String,
    },
    #[error("{path} fails authentication: it was altered, truncated or damaged in the repository")]
    Authentication { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The size of a `plain`-byte object once encrypted.
pub fn encrypted_size(plain: u64) -> u64 {
    let chunks = plain.div_ceil(CHUNK as u64).max(1);
    HEADER as u64 + plain + chunks * TAG as u64
}

/// Encrypts `input` into `output` as the object at `path` (its path within the
/// backup, bound to the object). Returns the plaintext bytes read.
pub fn encrypt(
    key: &Key,
    path: &str,
    input: impl Read,
    mut output: impl Write,
) -> Result<u64, CryptError> {
    let io = |source| CryptError::Io {
        path: path.to_string(),
        source,
    };
    let mut prefix = [0u8; NONCE_PREFIX];
    aes_gcm::aead::rand_core::RngCore::fill_bytes(&mut OsRng, &mut prefix);
    let header = header(&key.id, &prefix);
    output.write_all(&header).map_err(io)?;
    let aad = [header.as_slice(), path.as_bytes()].concat();
    let mut enc = EncryptorBE32::from_aead(key.cipher.clone(), GenericArray::from_slice(&prefix));
    let sealed = |e| authentication(path, e);
    let mut total = 0u64;
    let mut chunks = Chunks::new(input, CHUNK);
    loop {
        let (chunk, last) = chunks.next().map_err(io)?;
        total += chunk.len() as u64;
        if last {
            let out = enc.encrypt_last(payload(&chunk, &aad)).map_err(sealed)?;
            output.write_all(&out).map_err(io)?;
            break;
        }
        let out = enc.encrypt_next(payload(&chunk, &aad)).map_err(sealed)?;
        output.write_all(&out).map_err(io)?;
    }
    output.flush().map_err(io)?;
    Ok(total)
}

/// Decrypts the object at `path` from `input` into `output`, checking each chunk.
/// Returns the plaintext bytes written. Written bytes are authentic, but on an error
/// the output is incomplete: the caller discards it.
pub fn decrypt(
    key: &Key,
    path: &str,
    mut input: impl Read,
    mut output: impl Write,
) -> Result<u64, CryptError> {
    let io = |source| CryptError::Io {
        path: path.to_string(),
        source,
    };
    let header = read_chunk(&mut input, HEADER).map_err(io)?;
    let prefix = check_header(key, path, &header)?;
    let aad = [header.as_slice(), path.as_bytes()].concat();
    let mut dec = DecryptorBE32::from_aead(key.cipher.clone(), GenericArray::from_slice(prefix));
    let open = |e| authentication(path, e);
    let mut total = 0u64;
    let mut chunks = Chunks::new(input, CHUNK + TAG);
    loop {
        let (chunk, last) = chunks.next().map_err(io)?;
        if last {
            let out = dec.decrypt_last(payload(&chunk, &aad)).map_err(open)?;
            output.write_all(&out).map_err(io)?;
            total += out.len() as u64;
            break;
        }
        let out = dec.decrypt_next(payload(&chunk, &aad)).map_err(open)?;
        output.write_all(&out).map_err(io)?;
        total += out.len() as u64;
    }
    output.flush().map_err(io)?;
    Ok(total)
}

/// Encrypts a small object (a manifest) in memory.
pub fn encrypt_bytes(key: &Key, path: &str, plain: &[u8]) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::with_capacity(encrypted_size(plain.len() as u64) as usize);
    encrypt(key, path, plain, &mut out)?;
    Ok(out)
}

/// Decrypts a small object in memory.
pub fn decrypt_bytes(key: &Key, path: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::with_capacity(sealed.len());
    decrypt(key, path, sealed, &mut out)?;
    Ok(out)
}

/// The id of the key an object was encrypted with, read from its header.
pub fn key_id_of(header: &[u8]) -> Option<String> {
    (header.len() >= MAGIC.len() + ID_LEN && header.starts_with(MAGIC))
        .then(|| hex::encode(&header[MAGIC.len()..MAGIC.len() + ID_LEN]))
}

fn header(id: &[u8; ID_LEN], prefix: &[u8; NONCE_PREFIX]) -> Vec<u8> {
    [MAGIC.as_slice(), id.as_slice(), prefix.as_slice()].concat()
}

/// Checks an object's header against the key; returns its nonce prefix.
fn check_header<'a>(key: &Key, path: &str, header: &'a [u8]) -> Result<&'a [u8], CryptError> {
    let Some(needed) = key_id_of(header).filter(|_| header.len() == HEADER) else {
        return Err(CryptError::NotEncrypted {
            path: path.to_string(),
        });
    };
    if needed != key.id() {
        return Err(CryptError::WrongKey {
            path: path.to_string(),
            needed,
            given: key.id(),
        });
    }
    Ok(&header[MAGIC.len() + ID_LEN..])
}

fn payload<'a>(msg: &'a [u8], aad: &'a [u8]) -> Payload<'a, 'a> {
    Payload { msg, aad }
}

fn authentication(path: &str, _: aes_gcm::aead::Error) -> CryptError {
    CryptError::Authentication {
        path: path.to_string(),
    }
}

/// Reads up to `len` bytes: fewer only at the end of the input.
/// The chunks of a stream, each told whether it is the last: a full chunk is the last
/// only when nothing follows it, so one chunk is read ahead. The last may be short or
/// empty.
struct Chunks<R> {
    input: R,
    size: usize,
    ahead: Option<Vec<u8>>,
}

impl<R: Read> Chunks<R> {
    fn new(input: R, size: usize) -> Self {
        Chunks {
            input,
            size,
            ahead: None,
        }
    }

    fn next(&mut self) -> std::io::Result<(Vec<u8>, bool)> {
        let cur = match self.ahead.take() {
            Some(c) => c,
            None => read_chunk(&mut self.input, self.size)?,
        };
        if cur.len() < self.size {
            return Ok((cur, true));
        }
        let next = read_chunk(&mut self.input, self.size)?;
        let last = next.is_empty();
        self.ahead = Some(next);
        Ok((cur, last))
    }
}

fn read_chunk(input: &mut impl Read, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    input.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Key {
        Key::from_bytes(&[byte; 32])
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn objects_of_every_size_round_trip_with_the_size_announced() {
        let k = key(7);
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5] {
            let plain = data(n);
            let sealed = encrypt_bytes(&k, "db/t.ibd", &plain).expect("encrypts");
            assert_eq!(sealed.len() as u64, encrypted_size(n as u64), "size of {n}");
            assert_eq!(
                decrypt_bytes(&k, "db/t.ibd", &sealed).expect("decrypts"),
                plain
            );
        }
    }

    #[test]
    fn the_same_data_never_encrypts_the_same_and_hides_its_text() {
        let k = key(7);
        let plain = b"INSERT INTO t VALUES ('a known marker row')".repeat(100);
        let a = encrypt_bytes(&k, "p", &plain).expect("encrypts");
        let b = encrypt_bytes(&k, "p", &plain).expect("encrypts");
        assert_ne!(a, b, "a random nonce per object");
        let marker = b"known marker";
        assert!(!a.windows(marker.len()).any(|w| w == marker));
    }

    #[test]
    fn a_wrong_key_is_named_by_both_ids() {
        let sealed = encrypt_bytes(&key(1), "ibdata1", b"x").expect("encrypts");
        let e = decrypt_bytes(&key(2), "ibdata1", &sealed).expect_err("wrong key");
        let (needed, given) = (key(1).id(), key(2).id());
        assert!(
            matches!(&e, CryptError::WrongKey { needed: n, given: g, .. } if *n == needed && *g == given),
            "{e}"
        );
        assert_eq!(key_id_of(&sealed), Some(needed));
    }

    #[test]
    fn altered_truncated_extended_or_moved_objects_fail_authentication() {
        let k = key(3);
        let sealed = encrypt_bytes(&k, "a", &data(2 * CHUNK + 10)).expect("encrypts");
        let fails = |bytes: &[u8], path: &str| {
            matches!(
                decrypt_bytes(&k, path, bytes),
                Err(CryptError::Authentication { .. })
            )
        };
        let mut flipped = sealed.clone();
        flipped[HEADER + CHUNK + 3] ^= 1;
        assert!(fails(&flipped, "a"), "a flipped bit");
        assert!(
            fails(&sealed[..HEADER + CHUNK + TAG], "a"),
            "cut at a chunk"
        );
        assert!(fails(&sealed[..sealed.len() - 1], "a"), "cut short");
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0; TAG + 1]);
        assert!(fails(&longer, "a"), "extended");
        assert!(fails(&sealed, "b"), "under another path");
        let mut nonce = sealed.clone();
        nonce[HEADER - 1] ^= 1;
        assert!(fails(&nonce, "a"), "another nonce");
    }

    #[test]
    fn keys_are_hex_and_never_shown() {
        let hexkey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let k = Key::from_hex(&format!(" {hexkey}\n"), "t").expect("a key");
        assert_eq!(k.id().len(), 16);
        assert!(!format!("{k:?}").contains("0011223344"));
        let e = Key::from_hex("not a key 0011223344", "secret x").expect_err("bad");
        assert!(!e.to_string().contains("0011223344"), "{e}");
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        let e = decrypt_bytes(&k, "p", b"plain text, not sealed at all").expect_err("plain");
        assert!(matches!(e, CryptError::NotEncrypted { .. }), "{e}");
    }
}
