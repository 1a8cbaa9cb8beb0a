//! The executor: finds the `iptables-save` / `iptables-restore` pair of the
//! right flavour, reads the nat table, and pipes [`rules`] text into
//! `iptables-restore --noflush`.
//!
//! Atomicity: one restore per family commits the whole nat table or
//! nothing. When IPv4 succeeded and IPv6 then fails, the IPv4 set is
//! removed again, so a failed run leaves no partial set of ours (a set that
//! was there before is gone too; re-run after fixing the cause).

use crate::{Family, InitConfig, rules};
use std::{
    io::{self, Write},
    path::Path,
    process::{Command, Stdio},
};

/// Which iptables implementation the rules go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// The x_tables kernel interface (`iptables-legacy-*`).
    Legacy,
    /// nf_tables through the iptables syntax (`iptables-nft-*`).
    Nft,
}

/// The save/restore pair of one family and flavour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tools {
    /// The family they manage.
    pub family: Family,
    /// `iptables-save`-like program.
    pub save: String,
    /// `iptables-restore`-like program.
    pub restore: String,
}

/// Why the rules could not be read, applied or removed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// `iptables-save` failed.
    #[error("`{program} -t nat` failed ({status}): {stderr}")]
    Save {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// Its stderr, on one line.
        stderr: String,
    },
    /// `iptables-restore` rejected the input.
    #[error("`{program}` failed ({status}){rule}: {stderr}")]
    Restore {
        /// The command line.
        program: String,
        /// Its exit status.
        status: String,
        /// ` at line N: <the rule>` when the program named a line.
        rule: String,
        /// Its stderr, on one line.
        stderr: String,
    },
    /// The flavour could not be determined.
    #[error("cannot determine the iptables flavour: {0}")]
    Flavour(String),
    /// `--backend auto` found neither iptables nor nft.
    #[error(
        "no iptables-restore, iptables-nft-restore, iptables-legacy-restore or nft in PATH \
         (install iptables or nftables)"
    )]
    NoBackend,
}

/// Picks the flavour: `iptables --version` says `(nf_tables)` or
/// `(legacy)`; without `iptables`, whichever of `iptables-nft-restore` and
/// `iptables-legacy-restore` exists (nft first, as current distributions
/// default to it).
pub fn detect_flavour() -> Result<Flavour, InitError> {
    if let Ok(out) = Command::new("iptables").arg("--version").output() {
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(f) = flavour_from_version(&text) {
            return Ok(f);
        }
    }
    if exists("iptables-nft-restore") {
        Ok(Flavour::Nft)
    } else if exists("iptables-legacy-restore") {
        Ok(Flavour::Legacy)
    } else if exists("iptables-restore") {
        // An old iptables (before 1.8) that does not name its flavour.
        Ok(Flavour::Legacy)
    } else {
        Err(InitError::Flavour(
            "no iptables, iptables-nft-restore or iptables-legacy-restore in PATH".into(),
        ))
    }
}

/// `iptables v1.8.9 (nf_tables)` → nft, `(legacy)` → legacy.
pub fn flavour_from_version(version: &str) -> Option<Flavour> {
    if version.contains("(nf_tables)") {
        Some(Flavour::Nft)
    } else if version.contains("(legacy)") {
        Some(Flavour::Legacy)
    } else {
        None
    }
}

/// The programs for `family` and `flavour`: the flavour-named ones
/// (`iptables-nft-restore`) when installed, else the plain names.
pub fn tools(family: Family, flavour: Flavour) -> Tools {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let suffix = match flavour {
        Flavour::Legacy => "legacy",
        Flavour::Nft => "nft",
    };
    let pick = |verb: &str| {
        let named = format!("{base}-{suffix}-{verb}");
        if exists(&named) {
            named
        } else {
            format!("{base}-{verb}")
        }
    };
    Tools {
        family,
        save: pick("save"),
        restore: pick("restore"),
    }
}

/// Whether `program` is an executable file in `PATH`.
pub fn exists(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| Path::new(&dir).join(program).is_file())
    })
}

// === impl Tools ===

impl Tools {
    /// The current nat table, as `iptables-save -t nat` prints it.
    pub fn save(&self) -> Result<String, InitError> {
        let out = Command::new(&self.save)
            .args(["-t", "nat"])
            .output()
            .map_err(|source| InitError::Spawn {
                program: self.save.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(InitError::Save {
                program: self.save.clone(),
                status: out.status.to_string(),
                stderr: one_line(&out.stderr),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The restore input that installs `cfg`, given the current table.
    pub fn apply_text(&self, cfg: &InitConfig) -> Result<String, InitError> {
        let existing = rules::parse_existing(&self.save()?);
        Ok(rules::apply(cfg, self.family, &existing))
    }

    /// The restore input that removes our rules, if any are present.
    pub fn remove_text(&self) -> Result<Option<String>, InitError> {
        Ok(rules::remove(&rules::parse_existing(&self.save()?)))
    }

    /// Pipes `text` into `iptables-restore --noflush`.
    pub fn restore(&self, text: &str) -> Result<(), InitError> {
        pipe_into(&self.restore, &["--noflush"], text, failed_line)
    }
}

/// Runs `program args...` with `text` on its stdin. On failure: the error
/// names the command, its status, the input line that `failed_line` finds
/// in its stderr (a 1-based line number), and its stderr on one line.
pub(crate) fn pipe_into(
    program: &str,
    args: &[&str],
    text: &str,
    failed_line: fn(&str) -> Option<usize>,
) -> Result<(), InitError> {
    let spawn_err = |source| InitError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means the program exited early; its status and
        // stderr say why.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = one_line(&out.stderr);
    let rule = failed_line(&stderr)
        .and_then(|n| text.lines().nth(n.checked_sub(1)?))
        .map(|line| format!(" at `{}`", line.trim()))
        .unwrap_or_default();
    Err(InitError::Restore {
        program: [program]
            .iter()
            .chain(args)
            .copied()
            .collect::<Vec<_>>()
            .join(" "),
        status: out.status.to_string(),
        rule,
        stderr,
    })
}

/// The line number in `iptables-restore: line 7 failed` (legacy and nft
/// both say so), or in `Error occurred at line: 7`.
fn failed_line(stderr: &str) -> Option<usize> {
    for marker in ["line ", "line: "] {
        if let Some(i) = stderr.find(marker) {
            let digits: String = stderr[i + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse() {
                return Some(n);
            }
        }
    }
    None
}

fn one_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavours_from_version_output() {
        assert_eq!(
            flavour_from_version("iptables v1.8.9 (nf_tables)\n"),
            Some(Flavour::Nft)
        );
        assert_eq!(
            flavour_from_version("iptables v1.8.7 (legacy)\n"),
            Some(Flavour::Legacy)
        );
        assert_eq!(flavour_from_version("iptables v1.6.1\n"), None);
    }

    #[test]
    fn failed_line_numbers() {
        assert_eq!(failed_line("iptables-restore: line 7 failed"), Some(7));
        assert_eq!(
            failed_line(
                "iptables-restore v1.8.9 (nf_tables): unknown option \"--bogus\" Error occurred at line: 12 Try `iptables-restore -h'"
            ),
            Some(12)
        );
        assert_eq!(failed_line("permission denied"), None);
    }
}
