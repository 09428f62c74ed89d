//! Retention: which backups of a repository to keep and which to delete. Pure: the
//! caller lists the backups and passes `now`; nothing here touches a repository.
//!
//! # Semantics
//!
//! The count rules look only at *complete* backups with a known start time (the
//! manifest's `started_at`, else the time the id names), newest first (ties by id):
//!
//! - `keep_last: N` keeps the N newest.
//! - `keep_daily: N` keeps the newest backup of each of the N most recent UTC days that
//!   have a backup; `keep_weekly` the same per ISO week (`2026-W47`, so a week that
//!   spans New Year counts once), `keep_monthly` per calendar month. A day, week or
//!   month without a backup is skipped, not counted (as restic and pgBackRest do).
//! - `max_age: D` keeps every backup that started at most D before `now` (restic's
//!   `--keep-within`). Older backups are deleted unless another rule keeps them.
//!
//! A backup is kept when any rule keeps it; a complete backup no rule keeps is deleted.
//! On top of the rules, two guarantees that no policy can turn off:
//!
//! - the newest verified backup is kept; when no backup is verified, the newest
//!   complete one;
//! - a backup that a kept backup depends on (`base`, followed transitively) is kept.
//!
//! A complete backup whose start time is unknown is never deleted. Incomplete backups
//! (no manifest: an interrupted or running upload) are left alone, unless
//! `delete_incomplete_older_than: D` is set: then one whose id names a time more than D
//! before `now` is deleted. One whose id is not a time is always left alone.
//!
//! A policy without any rule is refused: it would delete either everything or nothing.

use chrono::{DateTime, Datelike, NaiveDateTime, TimeDelta, Utc};
use std::collections::HashMap;
use std::fmt;

/// The id format of backups: their UTC start time.
const ID_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// A backup as retention sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    pub id: String,
    /// When it started (the manifest's `started_at`); `None` when not known.
    pub started_at: Option<DateTime<Utc>>,
    /// Whether it has a valid, complete manifest.
    pub complete: bool,
    pub verified: bool,
    /// The backup this one needs to be restored.
    pub base: Option<String>,
}

/// The time a backup id names (`20261121T101500Z`), if it is one.
pub fn time_of_id(id: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(id, ID_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// A duration as the plan wrote it (`30d`), kept as text for messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Age {
    pub text: String,
    pub span: TimeDelta,
}

impl Age {
    /// Parses a humantime duration (`30d`, `26h`); `field` names it in errors.
    pub fn parse(field: &'static str, text: &str) -> Result<Self, PolicyError> {
        let text = text.trim();
        let std = humantime::parse_duration(text).map_err(|e| PolicyError::BadDuration {
            field,
            text: text.to_string(),
            message: e.to_string(),
        })?;
        if std.is_zero() {
            return Err(PolicyError::ZeroDuration { field });
        }
        let span = TimeDelta::from_std(std).map_err(|_| PolicyError::TooLong {
            field,
            text: text.to_string(),
        })?;
        Ok(Age {
            text: text.to_string(),
            span,
        })
    }

    /// Whether `t` is more than this age before `now`.
    fn exceeded(&self, t: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now.signed_duration_since(t) > self.span
    }
}

/// What to keep.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub max_age: Option<Age>,
    pub delete_incomplete_older_than: Option<Age>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy has no rule: set at least one of keep_last, keep_daily, keep_weekly, keep_monthly, max_age (without one, rotation would delete everything or nothing)")]
    NoRule,
    #[error("{field} is 0: keep at least 1, or leave the rule out")]
    ZeroCount { field: &'static str },
    #[error("{field} `{text}` is not a duration ({message}): write e.g. 30d, 26h")]
    BadDuration {
        field: &'static str,
        text: String,
        message: String,
    },
    #[error("{field} must be longer than zero")]
    ZeroDuration { field: &'static str },
    #[error("{field} `{text}` is too long")]
    TooLong { field: &'static str, text: String },
}

impl Policy {
    /// Refuses a policy without a rule and counts of zero.
    pub fn check(&self) -> Result<(), PolicyError> {
        let counts = [
            ("keep_last", self.keep_last),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
        ];
        if let Some((field, _)) = counts.iter().find(|(_, n)| *n == Some(0)) {
            return Err(PolicyError::ZeroCount { field });
        }
        if counts.iter().all(|(_, n)| n.is_none()) && self.max_age.is_none() {
            return Err(PolicyError::NoRule);
        }
        Ok(())
    }

    /// The rules in words: "the last 3, the newest of each of the 7 most recent days…".
    pub fn describe_rules(&self) -> String {
        let mut rules = Vec::new();
        if let Some(n) = self.keep_last {
            rules.push(format!("the last {n}"));
        }
        let mut periods = Vec::new();
        for (n, unit) in [
            (self.keep_daily, "day"),
            (self.keep_weekly, "ISO week"),
            (self.keep_monthly, "month"),
        ] {
            if let Some(n) = n {
                periods.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
            }
        }
        if let Some((last, rest)) = periods.split_last() {
            let listed = if rest.is_empty() {
                last.clone()
            } else {
                format!("{} and {last}", rest.join(", "))
            };
            rules.push(format!(
                "the newest of each of the last {listed} that have a backup (UTC)"
            ));
        }
        if let Some(a) = &self.max_age {
            rules.push(format!("every backup younger than {}", a.text));
        }
        rules.join(", ")
    }

    /// What happens to incomplete backups, in words.
    pub fn describe_incomplete(&self) -> String {
        match &self.delete_incomplete_older_than {
            Some(a) => format!("deletes incomplete backups older than {}", a.text),
            None => "leaves incomplete backups alone".into(),
        }
    }
}

/// Why a backup is kept or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Last(u32),
    Daily(String),
    Weekly(String),
    Monthly(String),
    WithinMaxAge(String),
    NewestVerified,
    NewestComplete,
    BaseOf(String),
    UnknownTime,
    Incomplete,
    IncompleteYoung(String),
    IncompleteUndated,
    OlderThanMaxAge(String),
    KeptByNoRule,
    IncompleteOlderThan(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Last(n) => write!(f, "last {n}"),
            Reason::Daily(d) => write!(f, "daily {d}"),
            Reason::Weekly(w) => write!(f, "weekly {w}"),
            Reason::Monthly(m) => write!(f, "monthly {m}"),
            Reason::WithinMaxAge(a) => write!(f, "within max_age {a}"),
            Reason::NewestVerified => f.write_str("newest verified"),
            Reason::NewestComplete => f.write_str("newest complete (none verified)"),
            Reason::BaseOf(id) => write!(f, "base of {id}"),
            Reason::UnknownTime => f.write_str("start time unknown: never deleted"),
            Reason::Incomplete => f.write_str("incomplete: left alone"),
            Reason::IncompleteYoung(a) => write!(f, "incomplete, not older than {a}"),
            Reason::IncompleteUndated => f.write_str("incomplete, id is not a time: left alone"),
            Reason::OlderThanMaxAge(a) => write!(f, "older than max_age {a}, kept by no rule"),
            Reason::KeptByNoRule => f.write_str("kept by no rule"),
            Reason::IncompleteOlderThan(a) => write!(f, "incomplete, older than {a}"),
        }
    }
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    pub complete: bool,
    /// Every reason to keep it, or the one reason to delete it.
    pub reasons: Vec<Reason>,
}

impl Decision {
    pub fn reasons_text(&self) -> String {
        let texts: Vec<String> = self.reasons.iter().map(Reason::to_string).collect();
        texts.join("; ")
    }
}

/// The decisions on every backup, newest id first, and what looked wrong.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// Dependencies on backups that are not in the repository.
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn kept(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.keep)
    }

    /// Backups to delete, oldest id first (the order to delete them in).
    pub fn deletions(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().rev().filter(|d| !d.keep)
    }

    /// One line per backup, newest first, as a diff: ` keep` or `- delete`.
    pub fn diff_lines(&self) -> Vec<String> {
        let width = self.decisions.iter().map(|d| d.id.len()).max().unwrap_or(0);
        self.decisions
            .iter()
            .map(|d| {
                let (sign, verb) = if d.keep {
                    (' ', "keep")
                } else {
                    ('-', "delete")
                };
                format!("{sign} {verb:<8}{:<width$}  {}", d.id, d.reasons_text())
            })
            .collect()
    }

    pub fn diff(&self) -> String {
        self.diff_lines().join("\n")
    }
}

/// Decides for each backup whether to keep or delete it (see the module doc).
pub fn decide(
    backups: &[Backup],
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<Plan, PolicyError> {
    policy.check()?;
    let mut keep: Vec<Vec<Reason>> = vec![Vec::new(); backups.len()];
    let mut delete: Vec<Option<Reason>> = vec![None; backups.len()];
    let times: Vec<Option<DateTime<Utc>>> = backups.iter().map(time_of).collect();
    let order = newest_first(backups, &times);
    apply_count_rules(&order, &times, policy, &mut keep);
    apply_max_age(&order, &times, policy, now, &mut keep);
    protect_newest(backups, &order, &mut keep);
    for (i, b) in backups.iter().enumerate() {
        if !b.complete {
            judge_incomplete(b, policy, now, &mut keep[i], &mut delete[i]);
        } else if times[i].is_none() {
            keep[i].push(Reason::UnknownTime);
        }
    }
    let warnings = protect_bases(backups, &mut keep);
    let decisions = assemble(backups, keep, delete, policy);
    Ok(Plan {
        decisions,
        warnings,
    })
}

/// Complete backups: their start time, else the time their id names. Incomplete ones:
/// the time their id names (they have no manifest).
fn time_of(b: &Backup) -> Option<DateTime<Utc>> {
    if b.complete {
        b.started_at.or_else(|| time_of_id(&b.id))
    } else {
        time_of_id(&b.id)
    }
}

/// Indexes of the complete, dated backups, newest first (ties: greater id first).
fn newest_first(backups: &[Backup], times: &[Option<DateTime<Utc>>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..backups.len())
        .filter(|&i| backups[i].complete && times[i].is_some())
        .collect();
    order.sort_by(|&a, &b| (times[b], &backups[b].id).cmp(&(times[a], &backups[a].id)));
    order
}

fn apply_count_rules(
    order: &[usize],
    times: &[Option<DateTime<Utc>>],
    policy: &Policy,
    keep: &mut [Vec<Reason>],
) {
    if let Some(n) = policy.keep_last {
        for &i in order.iter().take(n as usize) {
            keep[i].push(Reason::Last(n));
        }
    }
    let day = |t: DateTime<Utc>| t.format("%Y-%m-%d").to_string();
    let week = |t: DateTime<Utc>| {
        let w = t.iso_week();
        format!("{:04}-W{:02}", w.year(), w.week())
    };
    let month = |t: DateTime<Utc>| format!("{:04}-{:02}", t.year(), t.month());
    keep_per_period(order, times, policy.keep_daily, day, Reason::Daily, keep);
    keep_per_period(order, times, policy.keep_weekly, week, Reason::Weekly, keep);
    keep_per_period(
        order,
        times,
        policy.keep_monthly,
        month,
        Reason::Monthly,
        keep,
    );
}

/// Keeps the newest backup of each of the `n` most recent periods that have one.
/// `order` is newest first, so each period's backups are contiguous and its first one
/// is its newest.
fn keep_per_period(
    order: &[usize],
    times: &[Option<DateTime<Utc>>],
    n: Option<u32>,
    period: impl Fn(DateTime<Utc>) -> String,
    reason: impl Fn(String) -> Reason,
    keep: &mut [Vec<Reason>],
) {
    let Some(n) = n else { return };
    let mut seen = 0u32;
    let mut last: Option<String> = None;
    for &i in order {
        let Some(t) = times[i] else { continue };
        let p = period(t);
        if last.as_ref() == Some(&p) {
            continue;
        }
        if seen == n {
            break;
        }
        seen += 1;
        last = Some(p.clone());
        keep[i].push(reason(p));
    }
}

fn apply_max_age(
    order: &[usize],
    times: &[Option<DateTime<Utc>>],
    policy: &Policy,
    now: DateTime<Utc>,
    keep: &mut [Vec<Reason>],
) {
    let Some(age) = &policy.max_age else { return };
    for &i in order {
        if times[i].is_some_and(|t| !age.exceeded(t, now)) {
            keep[i].push(Reason::WithinMaxAge(age.text.clone()));
        }
    }
}

/// The newest verified backup, or the newest complete one when none is verified.
fn protect_newest(backups: &[Backup], order: &[usize], keep: &mut [Vec<Reason>]) {
    if let Some(&i) = order.iter().find(|&&i| backups[i].verified) {
        keep[i].push(Reason::NewestVerified);
    } else if let Some(&i) = order.first() {
        keep[i].push(Reason::NewestComplete);
    }
}

fn judge_incomplete(
    b: &Backup,
    policy: &Policy,
    now: DateTime<Utc>,
    keep: &mut Vec<Reason>,
    delete: &mut Option<Reason>,
) {
    let Some(limit) = &policy.delete_incomplete_older_than else {
        keep.push(Reason::Incomplete);
        return;
    };
    match time_of_id(&b.id) {
        None => keep.push(Reason::IncompleteUndated),
        Some(t) if limit.exceeded(t, now) => {
            *delete = Some(Reason::IncompleteOlderThan(limit.text.clone()))
        }
        Some(_) => keep.push(Reason::IncompleteYoung(limit.text.clone())),
    }
}

/// Keeps every backup a kept backup depends on, transitively; returns the dependencies
/// that are missing from the repository.
fn protect_bases(backups: &[Backup], keep: &mut [Vec<Reason>]) -> Vec<String> {
    let index: HashMap<&str, usize> = backups
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id.as_str(), i))
        .collect();
    let mut warnings = Vec::new();
    let mut visited = vec![false; backups.len()];
    let mut work: Vec<usize> = (0..backups.len())
        .filter(|&i| !keep[i].is_empty())
        .collect();
    while let Some(i) = work.pop() {
        if std::mem::replace(&mut visited[i], true) {
            continue;
        }
        let Some(base) = &backups[i].base else {
            continue;
        };
        let Some(&j) = index.get(base.as_str()) else {
            warnings.push(format!(
                "{} depends on {base}, which is not in the repository",
                backups[i].id
            ));
            continue;
        };
        let reason = Reason::BaseOf(backups[i].id.clone());
        if !keep[j].contains(&reason) {
            keep[j].push(reason);
        }
        work.push(j);
    }
    warnings
}

fn assemble(
    backups: &[Backup],
    keep: Vec<Vec<Reason>>,
    delete: Vec<Option<Reason>>,
    policy: &Policy,
) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = backups
        .iter()
        .zip(keep.into_iter().zip(delete))
        .map(|(b, (keep, delete))| {
            if !keep.is_empty() {
                return Decision {
                    id: b.id.clone(),
                    keep: true,
                    complete: b.complete,
                    reasons: keep,
                };
            }
            let why = delete.unwrap_or_else(|| match &policy.max_age {
                Some(a) => Reason::OlderThanMaxAge(a.text.clone()),
                None => Reason::KeptByNoRule,
            });
            Decision {
                id: b.id.clone(),
                keep: false,
                complete: b.complete,
                reasons: vec![why],
            }
        })
        .collect();
    decisions.sort_by(|a, b| b.id.cmp(&a.id));
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn id_at(t: DateTime<Utc>) -> String {
        t.format(ID_FORMAT).to_string()
    }

    fn complete(id: &str) -> Backup {
        Backup {
            id: id.into(),
            started_at: time_of_id(id),
            complete: true,
            verified: false,
            base: None,
        }
    }

    fn verified(id: &str) -> Backup {
        Backup {
            verified: true,
            ..complete(id)
        }
    }

    fn based(id: &str, base: &str) -> Backup {
        Backup {
            base: Some(base.into()),
            ..complete(id)
        }
    }

    fn incomplete(id: &str) -> Backup {
        Backup {
            id: id.into(),
            started_at: None,
            complete: false,
            verified: false,
            base: None,
        }
    }

    fn age(text: &str) -> Option<Age> {
        Some(Age::parse("max_age", text).expect("test duration"))
    }

    /// A complete backup started `hours` before `now`.
    fn hours_ago(now: DateTime<Utc>, hours: i64) -> Backup {
        complete(&id_at(now - TimeDelta::hours(hours)))
    }

    fn kept(plan: &Plan) -> Vec<&str> {
        plan.kept().map(|d| d.id.as_str()).collect()
    }

    fn deleted(plan: &Plan) -> Vec<&str> {
        plan.deletions().map(|d| d.id.as_str()).collect()
    }

    fn why(plan: &Plan, id: &str) -> String {
        plan.decisions
            .iter()
            .find(|d| d.id == id)
            .map(Decision::reasons_text)
            .unwrap_or_else(|| panic!("no decision on {id}"))
    }

    const NOW: &str = "2026-11-21T12:00:00Z";

    #[test]
    fn fewer_backups_than_the_rules_keep_are_all_kept() {
        let backups = [complete("20261120T010000Z"), complete("20261121T010000Z")];
        let policy = Policy {
            keep_last: Some(5),
            keep_daily: Some(7),
            keep_weekly: Some(4),
            keep_monthly: Some(12),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at(NOW)).expect("policy");
        assert_eq!(kept(&plan), ["20261121T010000Z", "20261120T010000Z"]);
        assert!(deleted(&plan).is_empty());
        assert_eq!(why(&plan, "20261120T010000Z"), "last 5; daily 2026-11-20");
        assert_eq!(
            why(&plan, "20261121T010000Z"),
            "last 5; daily 2026-11-21; weekly 2026-W47; monthly 2026-11; newest complete (none verified)"
        );
    }

    #[test]
    fn an_empty_repository_gives_an_empty_plan() {
        let policy = Policy {
            keep_last: Some(1),
            ..Default::default()
        };
        let plan = decide(&[], &policy, at(NOW)).expect("policy");
        assert!(plan.decisions.is_empty());
        assert_eq!(plan.diff(), "");
    }

    #[test]
    fn keep_last_keeps_the_newest_and_deletes_the_rest_oldest_first() {
        let ids = [
            "20261117T010000Z",
            "20261118T010000Z",
            "20261119T010000Z",
            "20261120T010000Z",
            "20261121T010000Z",
        ];
        let backups: Vec<Backup> = ids.iter().map(|id| complete(id)).collect();
        let policy = Policy {
            keep_last: Some(2),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at(NOW)).expect("policy");
        assert_eq!(kept(&plan), [ids[4], ids[3]]);
        assert_eq!(deleted(&plan), [ids[0], ids[1], ids[2]]);
        assert_eq!(why(&plan, ids[0]), "kept by no rule");
        assert_eq!(
            why(&plan, ids[4]),
            "last 2; newest complete (none verified)"
        );
    }

    /// The shipped plan's rules: a daily count alone would delete the nightly backup as
    /// soon as an ad-hoc one runs the same day; the `keep_last` floor keeps it.
    #[test]
    fn a_keep_last_floor_keeps_the_same_days_earlier_backup() {
        let ids = ["20261120T020000Z", "20261121T020000Z", "20261121T120000Z"];
        let backups: Vec<Backup> = ids.iter().map(|id| complete(id)).collect();
        let daily = Policy {
            keep_daily: Some(7),
            keep_weekly: Some(4),
            ..Default::default()
        };
        let plan = decide(&backups, &daily, at(NOW)).expect("policy");
        assert_eq!(deleted(&plan), ["20261121T020000Z"], "without the floor");
        let floored = Policy {
            keep_last: Some(3),
            ..daily
        };
        let plan = decide(&backups, &floored, at(NOW)).expect("policy");
        assert!(deleted(&plan).is_empty(), "{:?}", deleted(&plan));
    }

    #[test]
    fn daily_keeps_the_newest_backup_of_each_day() {
        let ids = [
            "20261120T010000Z",
            "20261120T120000Z",
            "20261120T230000Z",
            "20261121T020000Z",
            "20261121T030000Z",
        ];
        let backups: Vec<Backup> = ids.iter().map(|id| complete(id)).collect();
        let policy = Policy {
            keep_daily: Some(2),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at(NOW)).expect("policy");
        assert_eq!(kept(&plan), ["20261121T030000Z", "20261120T230000Z"]);
        assert_eq!(
            deleted(&plan),
            ["20261120T010000Z", "20261120T120000Z", "20261121T020000Z"]
        );
        assert_eq!(why(&plan, "20261120T230000Z"), "daily 2026-11-20");
    }

    #[test]
    fn days_without_a_backup_are_not_counted() {
        let backups = [
            complete("20261110T010000Z"),
            complete("20261118T010000Z"),
            complete("20261121T010000Z"),
        ];
        let policy = Policy {
            keep_daily: Some(2),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at(NOW)).expect("policy");
        assert_eq!(kept(&plan), ["20261121T010000Z", "20261118T010000Z"]);
        assert_eq!(deleted(&plan), ["20261110T010000Z"]);
    }

    #[test]
    fn weeks_are_iso_weeks_across_the_year_boundary() {
        // 2026 has 53 ISO weeks: W53 runs from Mon 2026-12-28 to Sun 2027-01-03.
        let backups = [
            complete("20261227T010000Z"), // Sun: 2026-W52
            complete("20261229T010000Z"), // Tue: 2026-W53
            complete("20270102T010000Z"), // Sat: 2026-W53, in calendar year 2027
            complete("20270105T010000Z"), // Tue: 2027-W01
        ];
        let policy = Policy {
            keep_weekly: Some(2),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at("2027-01-06T00:00:00Z")).expect("policy");
        assert_eq!(kept(&plan), ["20270105T010000Z", "20270102T010000Z"]);
        assert_eq!(why(&plan, "20270102T010000Z"), "weekly 2026-W53");
        assert_eq!(deleted(&plan), ["20261227T010000Z", "20261229T010000Z"]);

        let policy = Policy {
            keep_weekly: Some(3),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at("2027-01-06T00:00:00Z")).expect("policy");
        assert_eq!(why(&plan, "20261227T010000Z"), "weekly 2026-W52");
        assert_eq!(deleted(&plan), ["20261229T010000Z"]);
    }

    #[test]
    fn monthly_keeps_the_newest_of_each_month() {
        let backups = [
            complete("20260915T010000Z"),
            complete("20261001T010000Z"),
            complete("20261031T230000Z"),
            complete("20261102T010000Z"),
        ];
        let policy = Policy {
            keep_monthly: Some(2),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at(NOW)).expect("policy");
        assert_eq!(kept(&plan), ["20261102T010000Z", "20261031T230000Z"]);
        assert_eq!(why(&plan, "20261031T230000Z"), "monthly 2026-10");
        assert_eq!(deleted(&plan), ["20260915T010000Z", "20261001T010000Z"]);
    }

    #[test]
    fn all_rules_together_keep_the_union() {
        // One backup a day at 01:00 from 2026-09-01 to 2026-11-21 (82 days).
        let first = at("2026-09-01T01:00:00Z");
        let backups: Vec<Backup> = (0..82)
            .map(|d| complete(&id_at(first + TimeDelta::days(d))))
            .collect();
        let policy = Policy {
            keep_last: Some(2),
            keep_daily: Some(7),
            keep_weekly: Some(4),
            keep_monthly: Some(3),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at(NOW)).expect("policy");
        let mut expected: Vec<String> = (15..=21)
            .rev()
            .map(|d| format!("202611{d:02}T010000Z"))
            .collect();
        expected.extend(
            [
                "20261108T010000Z",
                "20261101T010000Z",
                "20261031T010000Z",
                "20260930T010000Z",
            ]
            .map(String::from),
        );
        assert_eq!(kept(&plan), expected);
        assert_eq!(deleted(&plan).len(), 82 - 11);
        assert_eq!(
            why(&plan, "20261121T010000Z"),
            "last 2; daily 2026-11-21; weekly 2026-W47; monthly 2026-11; newest complete (none verified)"
        );
        assert_eq!(
            why(&plan, "20261115T010000Z"),
            "daily 2026-11-15; weekly 2026-W46"
        );
        assert_eq!(why(&plan, "20261108T010000Z"), "weekly 2026-W45");
        assert_eq!(why(&plan, "20260930T010000Z"), "monthly 2026-09");
    }

    #[test]
    fn max_age_alone_keeps_what_is_younger() {
        let now = at(NOW);
        let backups = [
            hours_ago(now, 40 * 24),
            hours_ago(now, 20 * 24),
            hours_ago(now, 10 * 24),
            hours_ago(now, 24),
        ];
        let policy = Policy {
            max_age: age("14d"),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, now).expect("policy");
        assert_eq!(
            kept(&plan),
            [backups[3].id.as_str(), backups[2].id.as_str()]
        );
        assert_eq!(
            deleted(&plan),
            [backups[0].id.as_str(), backups[1].id.as_str()]
        );
        assert_eq!(
            why(&plan, &backups[1].id),
            "older than max_age 14d, kept by no rule"
        );
        assert_eq!(why(&plan, &backups[2].id), "within max_age 14d");
    }

    #[test]
    fn a_count_rule_keeps_what_max_age_would_delete() {
        let now = at(NOW);
        let backups = [hours_ago(now, 40 * 24), hours_ago(now, 30 * 24)];
        let policy = Policy {
            keep_monthly: Some(6),
            max_age: age("14d"),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, now).expect("policy");
        assert_eq!(
            why(&plan, &backups[1].id),
            "monthly 2026-10; newest complete (none verified)"
        );
        assert_eq!(deleted(&plan), [backups[0].id.as_str()]);
    }

    #[test]
    fn the_newest_verified_backup_is_kept_even_older_than_max_age() {
        let now = at(NOW);
        let old_verified = verified(&id_at(now - TimeDelta::days(30)));
        let older_verified = verified(&id_at(now - TimeDelta::days(31)));
        let backups = [
            older_verified.clone(),
            old_verified.clone(),
            hours_ago(now, 5 * 24),
            hours_ago(now, 24),
        ];
        let policy = Policy {
            max_age: age("14d"),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, now).expect("policy");
        assert_eq!(why(&plan, &old_verified.id), "newest verified");
        assert_eq!(deleted(&plan), [older_verified.id.as_str()]);
        assert_eq!(why(&plan, &backups[3].id), "within max_age 14d");
    }

    #[test]
    fn without_a_verified_backup_the_newest_complete_one_is_kept() {
        let now = at(NOW);
        let backups = [
            hours_ago(now, 40 * 24),
            hours_ago(now, 30 * 24),
            incomplete(&id_at(now)),
        ];
        let policy = Policy {
            max_age: age("14d"),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, now).expect("policy");
        assert_eq!(
            why(&plan, &backups[1].id),
            "newest complete (none verified)"
        );
        assert_eq!(deleted(&plan), [backups[0].id.as_str()]);
    }

    #[test]
    fn the_base_chain_of_a_kept_backup_is_kept() {
        let backups = [
            complete("20261101T010000Z"),                  // full
            based("20261102T010000Z", "20261101T010000Z"), // incremental on it
            complete("20261103T010000Z"),                  // unrelated
            based("20261104T010000Z", "20261102T010000Z"), // kept by keep_last
            complete("20261105T010000Z"),                  // a full nobody keeps…
            based("20261106T010000Z", "20261105T010000Z"), // …under one nobody keeps
            based("20261121T010000Z", "20261104T010000Z"), // kept by keep_last
        ];
        let policy = Policy {
            keep_last: Some(1),
            keep_weekly: Some(1),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at(NOW)).expect("policy");
        assert_eq!(
            kept(&plan),
            [
                "20261121T010000Z",
                "20261104T010000Z",
                "20261102T010000Z",
                "20261101T010000Z"
            ]
        );
        assert_eq!(why(&plan, "20261104T010000Z"), "base of 20261121T010000Z");
        assert_eq!(why(&plan, "20261101T010000Z"), "base of 20261102T010000Z");
        assert_eq!(
            deleted(&plan),
            ["20261103T010000Z", "20261105T010000Z", "20261106T010000Z"]
        );
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn a_missing_base_is_reported_and_a_cycle_ends() {
        let backups = [
            based("20261119T010000Z", "20261120T010000Z"),
            based("20261120T010000Z", "20261119T010000Z"),
            based("20261121T010000Z", "20261001T010000Z"),
        ];
        let policy = Policy {
            keep_daily: Some(2),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at(NOW)).expect("policy");
        assert_eq!(plan.decisions.len(), 3);
        assert!(deleted(&plan).is_empty(), "{plan:?}");
        assert_eq!(why(&plan, "20261119T010000Z"), "base of 20261120T010000Z");
        assert_eq!(
            plan.warnings,
            ["20261121T010000Z depends on 20261001T010000Z, which is not in the repository"]
        );
    }

    #[test]
    fn a_policy_without_rules_is_refused() {
        let no_rule = decide(&[complete("20261121T010000Z")], &Policy::default(), at(NOW));
        assert_eq!(no_rule, Err(PolicyError::NoRule));
        let only_incomplete = Policy {
            delete_incomplete_older_than: age("1d"),
            ..Default::default()
        };
        assert_eq!(only_incomplete.check(), Err(PolicyError::NoRule));
        let zero = Policy {
            keep_last: Some(3),
            keep_daily: Some(0),
            ..Default::default()
        };
        assert_eq!(
            zero.check(),
            Err(PolicyError::ZeroCount {
                field: "keep_daily"
            })
        );
    }

    #[test]
    fn durations_parse_as_humantime() {
        let a = Age::parse("max_age", " 30d ").expect("30d");
        assert_eq!((a.text.as_str(), a.span), ("30d", TimeDelta::days(30)));
        assert_eq!(
            Age::parse("max_age", "26h").map(|a| a.span),
            Ok(TimeDelta::hours(26))
        );
        assert!(matches!(
            Age::parse("max_age", "soon"),
            Err(PolicyError::BadDuration {
                field: "max_age",
                ..
            })
        ));
        assert_eq!(
            Age::parse("max_age", "0s"),
            Err(PolicyError::ZeroDuration { field: "max_age" })
        );
    }

    #[test]
    fn incomplete_backups_are_left_alone_and_not_counted() {
        let backups = [
            complete("20261120T010000Z"),
            incomplete("20261101T010000Z"),
            incomplete("20261121T010000Z"),
        ];
        let policy = Policy {
            keep_last: Some(1),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at(NOW)).expect("policy");
        assert_eq!(
            why(&plan, "20261120T010000Z"),
            "last 1; newest complete (none verified)"
        );
        assert_eq!(why(&plan, "20261101T010000Z"), "incomplete: left alone");
        assert!(deleted(&plan).is_empty());
    }

    #[test]
    fn old_incomplete_backups_are_deleted_when_asked() {
        let now = at(NOW);
        let old = incomplete(&id_at(now - TimeDelta::hours(30)));
        let young = incomplete(&id_at(now - TimeDelta::hours(2)));
        let odd = incomplete("manual-copy");
        let backups = [old.clone(), young.clone(), odd, hours_ago(now, 1)];
        let policy = Policy {
            keep_last: Some(1),
            delete_incomplete_older_than: age("26h"),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, now).expect("policy");
        assert_eq!(deleted(&plan), [old.id.as_str()]);
        assert_eq!(why(&plan, &old.id), "incomplete, older than 26h");
        assert_eq!(why(&plan, &young.id), "incomplete, not older than 26h");
        assert_eq!(
            why(&plan, "manual-copy"),
            "incomplete, id is not a time: left alone"
        );
    }

    #[test]
    fn an_incomplete_base_of_a_kept_backup_is_kept() {
        let backups = [
            incomplete("20261101T010000Z"),
            based("20261121T010000Z", "20261101T010000Z"),
        ];
        let policy = Policy {
            keep_last: Some(1),
            delete_incomplete_older_than: age("1d"),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, at(NOW)).expect("policy");
        assert!(deleted(&plan).is_empty());
        assert_eq!(why(&plan, "20261101T010000Z"), "base of 20261121T010000Z");
    }

    #[test]
    fn started_at_orders_backups_and_an_unknown_time_is_never_deleted() {
        let mut named = complete("nightly-b");
        named.started_at = Some(at("2026-11-21T01:00:00Z"));
        let mut older = complete("nightly-a");
        older.started_at = Some(at("2026-11-20T01:00:00Z"));
        let undated = complete("manual");
        let policy = Policy {
            keep_last: Some(1),
            ..Default::default()
        };
        let plan = decide(&[older, named, undated], &policy, at(NOW)).expect("policy");
        assert_eq!(deleted(&plan), ["nightly-a"]);
        assert_eq!(
            why(&plan, "nightly-b"),
            "last 1; newest complete (none verified)"
        );
        assert_eq!(why(&plan, "manual"), "start time unknown: never deleted");
    }

    #[test]
    fn the_diff_has_one_aligned_line_per_backup_newest_first() {
        let now = at(NOW);
        let backups = [complete("20261101T010000Z"), verified("20261121T010000Z")];
        let policy = Policy {
            keep_last: Some(1),
            keep_daily: Some(1),
            max_age: age("14d"),
            ..Default::default()
        };
        let plan = decide(&backups, &policy, now).expect("policy");
        assert_eq!(
            plan.diff(),
            "  keep    20261121T010000Z  last 1; daily 2026-11-21; within max_age 14d; newest verified\n\
             - delete  20261101T010000Z  older than max_age 14d, kept by no rule"
        );
    }

    #[test]
    fn the_policy_reads_as_words() {
        let policy = Policy {
            keep_last: Some(3),
            keep_daily: Some(7),
            keep_weekly: Some(1),
            max_age: age("30d"),
            ..Default::default()
        };
        assert_eq!(
            policy.describe_rules(),
            "the last 3, the newest of each of the last 7 days and 1 ISO week that have a backup (UTC), every backup younger than 30d"
        );
        assert_eq!(
            policy.describe_incomplete(),
            "leaves incomplete backups alone"
        );
    }
}
