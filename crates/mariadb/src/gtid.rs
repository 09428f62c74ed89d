//! MariaDB global transaction ids: one GTID (`domain-server-seq`) and a position made of
//! the last GTID of each replication domain (`0-1-250,1-2-7`), the form of
//! `@@gtid_binlog_pos`, `@@slave_connect_state` and `mariadb-binlog --start-position`.
//! Pure; the text form is canonical (domains ascending) so two equal positions are
//! equal strings.

use std::collections::BTreeMap;
use std::fmt;

/// One transaction's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("`{text}` is not a GTID position: {why} (expected domain-server-seq, comma-separated, e.g. 0-1-250)")]
pub struct GtidParseError {
    pub text: String,
    pub why: String,
}

impl std::str::FromStr for Gtid {
    type Err = GtidParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| GtidParseError {
            text: text.to_string(),
            why: why.to_string(),
        };
        let mut parts = text.trim().split('-');
        let mut next = |name: &str| {
            parts
                .next()
                .ok_or_else(|| bad(&format!("no {name}")))
                .map(str::to_string)
        };
        let (d, s, n) = (
            next("domain")?,
            next("server id")?,
            next("sequence number")?,
        );
        if parts.next().is_some() {
            return Err(bad("more than three numbers"));
        }
        Ok(Gtid {
            domain: d.parse().map_err(|_| bad("domain is not a number"))?,
            server: s.parse().map_err(|_| bad("server id is not a number"))?,
            seq: n
                .parse()
                .map_err(|_| bad("sequence number is not a number"))?,
        })
    }
}

/// The last GTID of each domain: how far a binlog, a server or an archive has got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos {
    by_domain: BTreeMap<u32, Gtid>,
}

impl GtidPos {
    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    pub fn gtids(&self) -> impl Iterator<Item = &Gtid> {
        self.by_domain.values()
    }

    pub fn get(&self, domain: u32) -> Option<&Gtid> {
        self.by_domain.get(&domain)
    }

    /// Records that `gtid` was applied: it becomes its domain's last GTID.
    pub fn advance(&mut self, gtid: Gtid) {
        self.by_domain.insert(gtid.domain, gtid);
    }

    /// Whether `gtid` is at or before this position (its domain's sequence number is
    /// not higher), i.e. already contained.
    pub fn contains(&self, gtid: &Gtid) -> bool {
        self.get(gtid.domain)
            .is_some_and(|last| gtid.seq <= last.seq)
    }

    /// Whether every domain of `self` is at or before `other`'s.
    pub fn is_at_or_before(&self, other: &GtidPos) -> bool {
        self.gtids().all(|g| other.contains(g))
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for g in self.gtids() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for GtidPos {
    type Err = GtidParseError;

    /// `""` is the empty position (nothing applied yet).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut pos = GtidPos::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let gtid: Gtid = part.parse()?;
            if pos.by_domain.contains_key(&gtid.domain) {
                return Err(GtidParseError {
                    text: text.to_string(),
                    why: format!("domain {} appears twice", gtid.domain),
                });
            }
            pos.advance(gtid);
        }
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_print_canonically_and_compare_per_domain() {
        let p: GtidPos = "1-2-7, 0-1-250".parse().expect("parses");
        assert_eq!(p.to_string(), "0-1-250,1-2-7");
        assert!(p.contains(&"0-3-250".parse().expect("gtid")));
        assert!(!p.contains(&"0-1-251".parse().expect("gtid")));
        assert!(!p.contains(&"5-1-1".parse().expect("gtid")));
        let earlier: GtidPos = "0-1-100".parse().expect("parses");
        assert!(earlier.is_at_or_before(&p));
        assert!(!p.is_at_or_before(&earlier));
        assert_eq!("".parse::<GtidPos>().expect("empty"), GtidPos::default());
    }

    #[test]
    fn bad_positions_say_why() {
        let e = "0-1".parse::<GtidPos>().expect_err("short");
        assert!(e.to_string().contains("no sequence number"), "{e}");
        let e = "0-1-5,0-1-6".parse::<GtidPos>().expect_err("twice");
        assert!(e.to_string().contains("domain 0 appears twice"), "{e}");
        assert!("0-x-5".parse::<GtidPos>().is_err());
    }
}
