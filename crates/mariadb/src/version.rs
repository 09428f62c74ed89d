//! Server versions: one parser for what `SELECT VERSION()` and `mariadbd --version`
//! print, and the comparisons the backup rules need (at least X.Y.Z, same series).

/// A server version, as `SELECT VERSION()` gives it (`10.11.19-MariaDB-0+deb12u1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub mariadb: bool,
}

impl ServerVersion {
    /// Reads `VERSION()` (`10.11.19-MariaDB-0+deb12u1-log`) or a `--version` line
    /// (`mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu`).
    pub fn parse(text: &str) -> Option<Self> {
        let number = parse_server_version(text)?;
        let mut nums = number.split('.');
        let major = nums.next()?.parse().ok()?;
        let minor = nums.next()?.parse().ok()?;
        let patch = nums.next()?.parse().ok()?;
        Some(Self {
            major,
            minor,
            patch,
            mariadb: text.to_ascii_lowercase().contains("mariadb"),
        })
    }

    pub fn at_least(&self, major: u32, minor: u32, patch: u32) -> bool {
        (self.major, self.minor, self.patch) >= (major, minor, patch)
    }

    /// Same release series (major.minor: 10.11, 11.8): the unit of on-disk
    /// compatibility for preparing a backup.
    pub fn same_series(&self, other: &ServerVersion) -> bool {
        (self.major, self.minor) == (other.major, other.minor)
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Extracts `X.Y.Z` from a `--version` line or a `VERSION()` value
/// (`10.11.19-MariaDB-0+deb12u1-log` gives `10.11.19`).
pub fn parse_server_version(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    // Prefer the word after "Ver"; otherwise the first word that looks like a version.
    let after_ver = text
        .split_whitespace()
        .skip_while(|w| *w != "Ver")
        .nth(1)
        .and_then(version_prefix);
    after_ver.or_else(|| words.find_map(version_prefix))
}

fn version_prefix(word: &str) -> Option<String> {
    let prefix: String = word
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let prefix = prefix.trim_end_matches('.');
    let parts: Vec<&str> = prefix.split('.').collect();
    (parts.len() >= 3 && parts.iter().all(|p| !p.is_empty())).then(|| prefix.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_server_version(
                "mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)"
            )
            .as_deref(),
            Some("10.11.19")
        );
        assert_eq!(
            parse_server_version("10.11.19-MariaDB-0+deb12u1-log").as_deref(),
            Some("10.11.19")
        );
        assert_eq!(parse_server_version("garbage 10.11"), None);
        // mariadb-backup names the server it was built from.
        assert_eq!(
            parse_server_version(
                "/usr/bin/mariadb-backup based on MariaDB server 10.11.19-MariaDB debian-linux-gnu (x86_64)\n"
            )
            .as_deref(),
            Some("10.11.19")
        );
    }

    #[test]
    fn reads_versions_for_comparison() {
        let v = ServerVersion::parse("mariadbd  Ver 11.8.9-MariaDB for debian-linux-gnu")
            .expect("parses");
        assert_eq!((v.major, v.minor, v.patch, v.mariadb), (11, 8, 9, true));
        assert!(v.at_least(11, 8, 0) && !v.at_least(11, 8, 10));
        assert_eq!(ServerVersion::parse("10.11"), None);
    }
}
