//! PEM files: certificates and private keys, with errors that name the file and
//! never quote its contents.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Every certificate in a PEM file (a chain: the leaf first), at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates ({})", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in the file", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{}: no PRIVATE KEY in the file", path.display())
        }
        e => format!("{}: not a PEM private key ({})", path.display(), pem_error(&e)),
    })
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, String> {
    if path.as_os_str().is_empty() {
        return Err("no file given".into());
    }
    std::fs::read(path).map_err(|e| format!("{}: cannot be read: {e}", path.display()))
}

/// A PEM error, said without the bytes it was about.
fn pem_error(error: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { .. } => "a section has no END line",
        Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        Error::Base64Decode(_) => "bad base64",
        Error::Io(_) => "unreadable",
        Error::NoItemsFound => "nothing found",
        _ => "malformed",
    }
}
