//! Rule sets as data, and the verdicts they give. A rule set is a TOML file
//! (presets ship in `rules/`, a regulator may load its own). Pure: the engine
//! reads the facts of one lot and returns a verdict with every reason.
//!
//! Boundaries, fixed here and tested: a threshold `min_carats = "0.50"`
//! applies to a stone of exactly 0.50 ct (`carats >= min`); a rule is in force
//! on its effective day (`date >= from`); mass is grandfathered only if it
//! left the banned country strictly before the rule's effective day.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use custody_proto::{Carats, Country, LotState, Share};
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::Zero;
use serde::{Deserialize, Serialize};

use crate::origin::{Composition, Departure, Source};

/// The presets shipped with custody, by name.
pub const PRESETS: [(&str, &str); 5] = [
    ("us-2022", include_str!("../rules/us-2022.toml")),
    ("us-2024", include_str!("../rules/us-2024.toml")),
    ("eu-2024", include_str!("../rules/eu-2024.toml")),
    ("eu-2025", include_str!("../rules/eu-2025.toml")),
    ("uk-2024", include_str!("../rules/uk-2024.toml")),
];

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("unknown rule set {0:?}; presets are us-2022, us-2024, eu-2024, eu-2025, uk-2024, or give a TOML file")]
    Unknown(String),
    #[error("rule set is not valid: {0}")]
    Invalid(String),
}

/// What a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The country of last substantial transformation (or of mining, for
    /// rough never transformed): substantially transformed elsewhere is fine.
    CustomsOrigin,
    /// Every country of mining, through merges and processing: "wholly or in part".
    MineOrigin,
    /// Any country the lot or its ancestors were exported from.
    ExportedFrom,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    #[serde(default)]
    pub description: String,
    /// A ban: the countries, and what it looks at. Or, instead, a
    /// requirement (`requires`): what must be established for the lot.
    #[serde(default)]
    pub banned: Vec<Country>,
    #[serde(default)]
    pub basis: Option<Basis>,
    #[serde(default)]
    pub requires: Option<Requirement>,
    /// The text it encodes, cited (an article, a regulation, a
    /// determination), for whoever reads a reason.
    #[serde(default)]
    pub cites: String,
    /// Effective day (in force from this day on).
    pub from: NaiveDate,
    /// Applies to stones of at least this mass.
    #[serde(default)]
    pub min_carats: Option<Carats>,
    /// Rough, polished, or both (default).
    #[serde(default = "both_states")]
    pub states: Vec<LotState>,
    /// For `mine_origin`: a banned share at or below this is ignored.
    #[serde(default)]
    pub de_minimis: Option<Share>,
    /// Mass that left the banned country before `from` does not count.
    #[serde(default)]
    pub grandfather: bool,
    /// Grandfathering by a fixed day instead of `from`: mass that left the
    /// banned country before this day does not count (the UK's general
    /// licence GBSAN0002: outside Russia on 2024-03-01).
    #[serde(default)]
    pub grandfather_before: Option<NaiveDate>,
}

/// What a rule with `requires` needs established, or the verdict is
/// `undetermined`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// A verification node found all of the lot's mass conforming.
    Verification,
    /// Every country of mining is traced: no unknown or only claimed mass.
    MiningCountries,
    /// Either of the two (the EU's 16th package for mixed rough).
    MiningCountriesOrVerification,
}

fn both_states() -> Vec<LotState> {
    vec![LotState::Rough, LotState::Polished]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    pub name: String,
    #[serde(default)]
    pub title: String,
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
}

/// Most rules one set may hold: each gives one reason in an answer.
pub const MAX_RULES: usize = 64;

/// The presets as their files word them: name, title, and each rule's id,
/// description and first day in force (what a page shows a person).
/// The presets, and with `date`, which of each jurisdiction's is in force
/// on it (`in_force`: `{"us": "us-2024", ...}`, a jurisdiction with none
/// in force left out).
pub fn presets_on(date: Option<NaiveDate>) -> serde_json::Value {
    let mut answer = presets();
    if let Some(day) = date {
        let in_force: serde_json::Map<String, serde_json::Value> =
            ["us", "eu", "uk"].iter().filter_map(|j| Some(((*j).to_owned(), serde_json::Value::from(in_force(&format!("{j}-"), day)?)))).collect();
        answer["in_force"] = serde_json::Value::Object(in_force);
    }
    answer
}

pub fn presets() -> serde_json::Value {
    let sets: Vec<serde_json::Value> = PRESETS
        .iter()
        .filter_map(|(_, text)| RuleSet::parse(text).ok())
        .map(|set| {
            let rules: Vec<serde_json::Value> =
                set.rules.iter().map(|r| serde_json::json!({"id": r.id, "description": r.description, "cites": r.cites, "from": r.from.to_string()})).collect();
            serde_json::json!({"name": set.name, "title": set.title, "rules": rules})
        })
        .collect();
    serde_json::json!({"presets": sets})
}

impl RuleSet {
    /// A preset by name, or the text of a TOML file.
    pub fn load(name_or_toml: &str) -> Result<RuleSet, RuleError> {
        if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name_or_toml) {
            return RuleSet::parse(text);
        }
        if !name_or_toml.contains('=') {
            return Err(RuleError::Unknown(name_or_toml.chars().take(64).collect()));
        }
        RuleSet::parse(name_or_toml)
    }

    pub fn parse(text: &str) -> Result<RuleSet, RuleError> {
        let set: RuleSet = toml::from_str(text).map_err(|e| RuleError::Invalid(e.to_string()))?;
        if set.rules.is_empty() {
            return Err(RuleError::Invalid("a rule set needs at least one [[rule]]".into()));
        }
        if set.rules.len() > MAX_RULES {
            return Err(RuleError::Invalid(format!("a rule set has at most {MAX_RULES} rules; this one has {}", set.rules.len())));
        }
        for r in &set.rules {
            match (r.requires, r.basis) {
                (Some(_), None) if r.banned.is_empty() => {}
                (Some(_), _) => return Err(RuleError::Invalid(format!("rule {} has `requires`: it bans nothing, so it takes no `basis` or `banned`", r.id))),
                (None, None) => return Err(RuleError::Invalid(format!("rule {} needs a `basis` (or a `requires`)", r.id))),
                (None, Some(_)) if r.banned.is_empty() => return Err(RuleError::Invalid(format!("rule {} bans no country", r.id))),
                (None, Some(_)) => {}
            }
        }
        Ok(set)
    }
}

/// The preset a rule set's name imitates without being it: the same
/// letters and digits once case, spacing, dashes and look-alike characters
/// (UTS #39 confusables: a Cyrillic `ѕ`, a Unicode hyphen) are set aside.
/// A rule set is a preset only under the preset's exact name and text;
/// anything named like one is refused, so that `us‐2024` with a loosened
/// threshold can never be read as `us-2024`.
pub fn imitated_preset(name: &str) -> Option<&'static str> {
    fn fold(s: &str) -> String {
        let lower = s.to_lowercase();
        let skeleton: String = unicode_security::confusable_detection::skeleton(&lower).collect();
        skeleton.to_lowercase().chars().filter(char::is_ascii_alphanumeric).collect()
    }
    let folded = fold(name);
    PRESETS.iter().map(|(n, _)| *n).find(|n| *n != name && fold(n) == folded)
}

/// Whether `name` and `text` are exactly a shipped preset.
pub fn is_preset(name: &str, text: &str) -> bool {
    PRESETS.iter().any(|(n, t)| *n == name && *t == text)
}

/// The preset of one jurisdiction (`us-`, `eu-`, `uk-`) in force on
/// `date`: each preset of a jurisdiction (by name, oldest first) takes
/// over from the one before on the first day a rule the earlier one lacks
/// is in force (us-2024 on 2024-03-01, when its 1.00 ct rule began). A
/// filing uses it, never the first of that jurisdiction's names it finds.
pub fn in_force(jurisdiction: &str, date: NaiveDate) -> Option<&'static str> {
    let mut named: Vec<(&'static str, BTreeSet<NaiveDate>)> = PRESETS
        .iter()
        .filter(|(n, _)| n.starts_with(jurisdiction))
        .filter_map(|(n, text)| Some((*n, RuleSet::parse(text).ok()?.rules.iter().map(|r| r.from).collect())))
        .collect();
    named.sort_by_key(|(n, _)| *n);
    let mut current = None;
    let mut before = BTreeSet::new();
    for (name, dates) in named {
        let takes_over = dates.difference(&before).next().or(dates.first()).copied();
        if takes_over.is_some_and(|d| d <= date) {
            current = Some(name);
        }
        before = dates;
    }
    current
}

/// What the engine needs to know of a lot.
pub struct Facts<'a> {
    pub carats: Carats,
    pub state: LotState,
    pub composition: &'a Composition,
    /// Countries where parts were last cut and polished (empty: never).
    pub transformed_in: &'a BTreeSet<Country>,
    /// Part of the lot's customs history is unknown (declared polished).
    pub customs_unknown: bool,
    /// Latest export date out of each country, over the lot's history.
    pub exported_from: &'a BTreeMap<Country, NaiveDate>,
    /// Countries whose export date in `exported_from` is only claimed.
    pub exported_claimed: &'a BTreeSet<Country>,
    /// Part of it is declared stock, not cut and polished since: where that
    /// part was exported from before its declaration is not known.
    pub exports_unknown: bool,
    /// A regulator flagged the lot or an ancestor.
    pub flagged: bool,
    /// A verification node found all of the lot's mass conforming: who
    /// and under which number.
    pub verified: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Admissible,
    Undetermined,
    Prohibited,
}

/// One finding, for people and machines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// The rule it comes from (or `history` for flags and gaps).
    pub rule: String,
    /// What this rule says of this lot.
    pub finding: Verdict,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective: Option<String>,
}

fn reason(rule: &Rule, finding: Verdict, text: String) -> Reason {
    Reason { rule: rule.id.clone(), finding, text, country: None, share: None, threshold: None, effective: Some(rule.from.to_string()) }
}

/// The verdict of a rule set on a lot on a date, with every reason.
pub fn evaluate(set: &RuleSet, facts: &Facts<'_>, date: NaiveDate) -> (Verdict, Vec<Reason>) {
    let mut reasons: Vec<Reason> = set.rules.iter().map(|r| evaluate_rule(r, facts, date)).collect();
    if facts.flagged {
        reasons.push(Reason {
            rule: "history".into(),
            finding: Verdict::Undetermined,
            text: "a regulator flagged this lot or one of its ancestors".into(),
            country: None,
            share: None,
            threshold: None,
            effective: None,
        });
    }
    let verdict = reasons.iter().map(|r| r.finding).max().unwrap_or(Verdict::Admissible);
    (verdict, reasons)
}

fn evaluate_rule(rule: &Rule, f: &Facts<'_>, date: NaiveDate) -> Reason {
    use Verdict::*;
    if date < rule.from {
        return reason(rule, Admissible, format!("not in force on {date}; in force from {}", rule.from));
    }
    if !rule.states.contains(&f.state) {
        return reason(rule, Admissible, format!("applies to {:?} only", rule.states));
    }
    if let Some(min) = rule.min_carats {
        if f.carats < min {
            let mut r = reason(rule, Admissible, format!("{} ct is below the {min} ct threshold", f.carats));
            r.threshold = Some(min.to_string());
            return r;
        }
    }
    let mut r = match (rule.requires, rule.basis) {
        (Some(need), _) => required(rule, need, f),
        (None, Some(Basis::CustomsOrigin)) => customs(rule, f),
        (None, Some(Basis::MineOrigin)) => mine(rule, f),
        (None, Some(Basis::ExportedFrom)) => exported(rule, f),
        (None, None) => reason(rule, Undetermined, "this rule says neither what it bans nor what it requires".into()),
    };
    r.threshold = rule.min_carats.map(|m| m.to_string());
    r
}

/// Whether a rule counts a banned part, given when it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    /// It did not leave before the rule took effect: it counts.
    Counts,
    /// It left before, on a date the ledger vouches for: grandfathered.
    Before,
    /// It left before only by a late-recorded (claimed) date: the
    /// grandfathering cannot be established.
    ClaimedBefore,
}

/// What a rule with `requires` finds.
fn required(rule: &Rule, need: Requirement, f: &Facts<'_>) -> Reason {
    use Verdict::*;
    let known = !f.composition.has_untraced();
    let countries = || f.composition.by_source().keys().map(Source::label).collect::<Vec<_>>().join(", ");
    match (need, f.verified, known) {
        (Requirement::Verification | Requirement::MiningCountriesOrVerification, Some(by), _) => {
            reason(rule, Admissible, format!("verified by a verification node ({by})"))
        }
        (Requirement::MiningCountries | Requirement::MiningCountriesOrVerification, _, true) => {
            reason(rule, Admissible, format!("every country of mining is traced ({})", countries()))
        }
        (Requirement::Verification, None, _) => reason(rule, Undetermined, "needs verification by a verification node, and none verified it".into()),
        (Requirement::MiningCountries, _, false) => {
            reason(rule, Undetermined, "needs every country of mining known: part of its mass has unknown or only claimed origin".into())
        }
        (Requirement::MiningCountriesOrVerification, None, false) => reason(
            rule,
            Undetermined,
            "needs every country of mining known, or verification by a verification node: part of its mass has unknown or only claimed origin, and no node verified it"
                .into(),
        ),
    }
}

fn left(rule: &Rule, d: Departure, claimed: bool) -> Left {
    let cutoff = rule.grandfather_before.unwrap_or(rule.from);
    let grandfather = rule.grandfather || rule.grandfather_before.is_some();
    match d {
        Departure::Left(date) if grandfather && date < cutoff => {
            if claimed {
                Left::ClaimedBefore
            } else {
                Left::Before
            }
        }
        // A departure on or after the date is against the actor's interest:
        // it stands as recorded, late or not.
        _ => Left::Counts,
    }
}

fn claimed_departure(rule: &Rule, c: Country) -> Reason {
    let mut r = reason(
        rule,
        Verdict::Undetermined,
        format!(
            "its {c} mass left {c} before {} only by the date of a late record: the departure date is only claimed",
            rule.grandfather_before.unwrap_or(rule.from)
        ),
    );
    r.country = Some(c.to_string());
    r
}

fn customs(rule: &Rule, f: &Facts<'_>) -> Reason {
    use Verdict::*;
    if !f.transformed_in.is_empty() || f.customs_unknown {
        if let Some(c) = f.transformed_in.iter().find(|c| rule.banned.contains(c)) {
            let mut r = reason(rule, Prohibited, format!("substantially transformed (cut and polished) in {c}"));
            r.country = Some(c.to_string());
            return r;
        }
        if f.customs_unknown {
            return reason(rule, Undetermined, "where part of this stone was cut and polished is not traced".into());
        }
        let list: Vec<String> = f.transformed_in.iter().map(|c| c.to_string()).collect();
        return reason(rule, Admissible, format!("customs origin {} (cut and polished there) is not banned", list.join("+")));
    }
    // Rough never transformed: its customs origin is where it was mined.
    let mut unknown = false;
    let mut claimed = None;
    for (part, p) in f.composition.parts() {
        match part.source {
            Source::Mined(c) if part.traced && rule.banned.contains(&c) => match left(rule, p.departure, p.claimed) {
                Left::Counts => {
                    let mut r = reason(rule, Prohibited, format!("rough of {c} origin, never substantially transformed"));
                    r.country = Some(c.to_string());
                    return r;
                }
                Left::ClaimedBefore => claimed = claimed.or(Some(c)),
                Left::Before => {}
            },
            Source::Mined(_) if part.traced => {}
            _ => unknown = true,
        }
    }
    if unknown {
        return reason(rule, Undetermined, "part of this rough has unknown or only claimed origin".into());
    }
    if let Some(c) = claimed {
        return claimed_departure(rule, c);
    }
    reason(rule, Admissible, "rough not mined in a banned country".into())
}

fn mine(rule: &Rule, f: &Facts<'_>) -> Reason {
    use Verdict::*;
    let mut banned: BTreeMap<Country, BigRational> = BTreeMap::new();
    let mut grand: BTreeSet<Country> = BTreeSet::new();
    let mut claimed: BTreeMap<Country, BigRational> = BTreeMap::new();
    let mut unknown = BigRational::zero();
    for (part, p) in f.composition.parts() {
        match part.source {
            Source::Mined(c) if part.traced && rule.banned.contains(&c) => match left(rule, p.departure, p.claimed) {
                Left::Before => {
                    grand.insert(c);
                }
                Left::ClaimedBefore => *claimed.entry(c).or_insert_with(BigRational::zero) += &p.share,
                Left::Counts => {
                    let e = banned.entry(c).or_insert_with(BigRational::zero);
                    *e = &*e + &p.share;
                }
            },
            Source::Mined(_) if part.traced => {}
            _ => unknown += &p.share,
        }
    }
    let de_minimis = rule.de_minimis.map_or_else(BigRational::zero, |s| BigRational::new(BigInt::from(s.ten_thousandths()), BigInt::from(10_000)));
    if let Some((c, share)) = banned.iter().find(|(_, s)| **s > de_minimis) {
        // Quote the share as `mine_origin` shows it (largest remainder), so
        // one answer never shows two numbers for the same mass.
        let whole = f.composition.by_source().get(&Source::Mined(*c)) == Some(share);
        let shown = f
            .composition
            .rounded()
            .into_iter()
            .find(|(country, _)| whole && country.as_str() == c.as_str())
            .map_or_else(|| crate::view::four_decimals(share), |(_, s)| s);
        let mut r = reason(rule, Prohibited, format!("mined wholly or in part in {c} ({shown} of its mass), after the rule took effect"));
        r.country = Some(c.to_string());
        r.share = Some(shown);
        return r;
    }
    if !unknown.is_zero() {
        let mut r = reason(rule, Undetermined, "part of its mass has unknown or only claimed origin".into());
        r.share = Some(crate::view::four_decimals(&unknown));
        return r;
    }
    if let Some((c, share)) = claimed.iter().find(|(_, s)| **s > de_minimis) {
        let mut r = claimed_departure(rule, *c);
        r.share = Some(crate::view::four_decimals(share));
        return r;
    }
    if let Some(c) = grand.iter().next() {
        let mut r = reason(rule, Admissible, format!("its {c} mass left {c} before {}: grandfathered", rule.grandfather_before.unwrap_or(rule.from)));
        r.country = Some(c.to_string());
        return r;
    }
    reason(rule, Admissible, "no mass mined in a banned country".into())
}

fn exported(rule: &Rule, f: &Facts<'_>) -> Reason {
    use Verdict::*;
    let mut claimed = None;
    for (c, when) in f.exported_from {
        if !rule.banned.contains(c) {
            continue;
        }
        match left(rule, Departure::Left(*when), f.exported_claimed.contains(c)) {
            Left::Counts => {
                let mut r = reason(rule, Prohibited, format!("exported from {c} on {when}"));
                r.country = Some(c.to_string());
                return r;
            }
            Left::ClaimedBefore => claimed = claimed.or(Some(*c)),
            Left::Before => {}
        }
    }
    if let Some(c) = claimed {
        return claimed_departure(rule, c);
    }
    // A lot cut and polished since its declared part joined is a new good:
    // its exports are all on the ledger (DOMAIN.md, under the presets).
    if f.exports_unknown {
        return reason(rule, Undetermined, "part of its history is only claimed, so where it was exported from is not known".into());
    }
    reason(rule, Admissible, "never exported from a banned country".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_load_and_cite_their_sources() {
        for (name, text) in PRESETS {
            let set = RuleSet::load(name).unwrap();
            assert_eq!(set.name, name);
            assert!(text.contains("# Source:"), "{name} cites its legal source");
            for rule in &set.rules {
                assert!(rule.cites.len() > 10, "{name}: {} cites the text it encodes", rule.id);
            }
        }
    }

    #[test]
    fn a_name_like_a_presets_is_told_apart_from_the_preset() {
        for look_alike in ["us\u{2010}2024", "us-2024 ", "US-2024", "us\u{2013}2024", "u\u{0455}-2024", "us 2024", "\u{FF55}s-2024"] {
            assert_eq!(imitated_preset(look_alike), Some("us-2024"), "{look_alike:?}");
        }
        for own in ["us-2024", "eu-2024", "ofac-diamonds-2025", "us-2024-strict"] {
            assert_eq!(imitated_preset(own), None, "{own:?}");
        }
        assert!(is_preset("us-2024", PRESETS[1].1));
        assert!(!is_preset("us-2024", &PRESETS[1].1.replace("\"0.50\"", "\"5.00\"")));
    }

    #[test]
    fn the_preset_in_force_is_the_newest_whose_new_rules_began() {
        let on = |d: &str| NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
        assert_eq!(in_force("us-", on("2021-12-31")), None);
        assert_eq!(in_force("us-", on("2022-03-11")), Some("us-2022"));
        assert_eq!(in_force("us-", on("2024-02-29")), Some("us-2022"));
        assert_eq!(in_force("us-", on("2024-03-01")), Some("us-2024"));
        assert_eq!(in_force("us-", on("2026-12-02")), Some("us-2024"));
        assert_eq!(in_force("eu-", on("2024-11-15")), Some("eu-2024"));
        assert_eq!(in_force("eu-", on("2025-03-01")), Some("eu-2025"));
        assert_eq!(in_force("uk-", on("2024-11-15")), Some("uk-2024"));
    }

    #[test]
    fn broken_rule_files_are_refused() {
        assert!(matches!(RuleSet::load("uk-2030"), Err(RuleError::Unknown(_))));
        assert!(matches!(RuleSet::load("name = \"x\"\n"), Err(RuleError::Invalid(_))));
        assert!(matches!(
            RuleSet::load("name = \"x\"\n[[rule]]\nid = \"a\"\nbanned = [\"XX\"]\nbasis = \"mine_origin\"\nfrom = \"2024-01-01\"\n"),
            Err(RuleError::Invalid(_))
        ));
        assert!(matches!(
            RuleSet::load("name = \"x\"\n[[rule]]\nid = \"a\"\nbanned = [\"RU\"]\nbasis = \"mine_origin\"\nfrom = \"2024-01-01\"\nbogus = 1\n"),
            Err(RuleError::Invalid(_))
        ));
    }
}
