//! The join token, `QRY1-<CA digest>-<secret>`: the sha256 of the cluster CA certificate and the
//! cluster's join secret, each 32 bytes in lower-case hex.

use std::fmt;
use std::str::FromStr;

/// The sha256 of a CA certificate (DER).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaDigest(pub [u8; 32]);

impl fmt::Display for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaDigest({self})")
    }
}

/// A join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The CA the joiner must find on the other side.
    pub ca: CaDigest,
    /// The secret the member checks.
    pub secret: [u8; 32],
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "JoinToken(QRY1-{}-…)", self.ca)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QRY1-{}-{}", self.ca, hex::encode(self.secret))
    }
}

/// Why a string is not a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `QRY1-...`.
    #[error("a join token starts with QRY1- (get one with `quarryd token` on a member)")]
    Prefix,
    /// Not three parts.
    #[error("a join token is QRY1-<CA digest>-<secret>; this one has {0} parts")]
    Parts(usize),
    /// A part is not 64 hex digits.
    #[error("the {0} part of the join token is not 64 hex digits: it was cut or mistyped")]
    Hex(&'static str),
}

fn parse32(s: &str, what: &'static str) -> Result<[u8; 32], TokenError> {
    let v = hex::decode(s).map_err(|_| TokenError::Hex(what))?;
    v.try_into().map_err(|_| TokenError::Hex(what))
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let Some(rest) = s.strip_prefix("QRY1-") else {
            return Err(TokenError::Prefix);
        };
        let parts: Vec<&str> = rest.split('-').collect();
        if parts.len() != 2 {
            return Err(TokenError::Parts(parts.len() + 1));
        }
        Ok(JoinToken {
            ca: CaDigest(parse32(parts[0], "CA digest")?),
            secret: parse32(parts[1], "secret")?,
        })
    }
}

impl JoinToken {
    /// Does `secret` match, compared in constant time?
    pub fn secret_matches(&self, secret: &[u8; 32]) -> bool {
        self.secret
            .iter()
            .zip(secret)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_hides_its_secret_in_debug() {
        let t = JoinToken {
            ca: CaDigest([0xab; 32]),
            secret: [0x01; 32],
        };
        let s = t.to_string();
        assert!(s.starts_with("QRY1-abab"));
        assert_eq!(s.parse::<JoinToken>(), Ok(t.clone()));
        assert!(!format!("{t:?}").contains("0101"));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        assert_eq!("XYZ".parse::<JoinToken>(), Err(TokenError::Prefix));
        assert_eq!("QRY1-ab".parse::<JoinToken>(), Err(TokenError::Parts(2)));
        let cut = format!("QRY1-{}-{}", "ab".repeat(32), "cd".repeat(31));
        assert_eq!(cut.parse::<JoinToken>(), Err(TokenError::Hex("secret")));
        let bad = format!("QRY1-{}-{}", "zz".repeat(32), "cd".repeat(32));
        assert_eq!(bad.parse::<JoinToken>(), Err(TokenError::Hex("CA digest")));
    }

    #[test]
    fn only_the_same_secret_matches() {
        let t = JoinToken {
            ca: CaDigest([0; 32]),
            secret: [7; 32],
        };
        assert!(t.secret_matches(&[7; 32]));
        let mut other = [7; 32];
        other[31] = 8;
        assert!(!t.secret_matches(&other));
    }
}
