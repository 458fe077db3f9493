//! Customs filings filled from an origin certificate's claims, so that
//! every line a filing states is one the certificate proves. Pure: a
//! certificate in, a filing out.
//!
//! - `us-country-of-mining`: one line per country of mining with its carats
//!   and share, the country of origin, and the self-certification CBP asks
//!   for on entry (CBP Form 167-style text, from 2025-01-27).
//! - `eu-due-diligence`: the origin facts of the EU's due diligence
//!   statement on diamond origin, for a polished stone over 0.50 ct.
//! - `kp-mining-countries`: every country of mining of a rough lot, with
//!   percentages, as a Kimberley Process certificate for mixed rough must
//!   now list them (EU 16th package, from 2025-03-01).

use custody_proto::certificate::OriginCertificate;
use serde_json::{json, Value};

pub const FORMS: [&str; 3] = ["us-country-of-mining", "eu-due-diligence", "kp-mining-countries"];

/// The text an importer certifies on a US entry of non-industrial diamonds.
pub const US_SELF_CERTIFICATION: &str = "I certify that the non-industrial diamonds in this entry were not mined, extracted, produced, or manufactured wholly or in part in the Russian Federation, notwithstanding whether such diamonds have been substantially transformed into another product outside of the Russian Federation.";

/// What the ledger cannot know and the filer can: who imports, the entry,
/// who signs (`--profile FILE`, JSON). A field neither the ledger nor the
/// profile gives is listed as missing, never invented.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The importer of record (name and, where the form asks, its number).
    pub importer_of_record: Option<String>,
    /// The customs entry number.
    pub entry_number: Option<String>,
    pub signer: Option<Signer>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signer {
    pub name: Option<String>,
    pub title: Option<String>,
}

/// The HTS subheading of a lot: unsorted rough (7102.10) until it was
/// sorted, sorted rough (7102.31: unworked or simply sawn, cleaved or
/// bruted), polished (7102.39).
fn hts(origin: &Value) -> &'static str {
    let sorted = origin["transformations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["kind"] == "processed" && t["note"].as_str().is_some_and(|n| n.contains("sorting")));
    match (origin["state"].as_str(), sorted) {
        (Some("polished"), _) => "7102.39",
        (_, true) => "7102.31",
        _ => "7102.10",
    }
}

/// The documents the lot's path names (by hash, with their references):
/// what makes each line verifiable beyond the ledger.
fn documents(origin: &Value) -> Vec<Value> {
    origin["path"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|step| {
            step["vouched"]["evidence"].as_array().cloned().unwrap_or_default().into_iter().map(move |mut d| {
                d["seq"] = step["seq"].clone();
                d
            })
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum FilingError {
    #[error("no form {0:?}; forms are us-country-of-mining, eu-due-diligence, kp-mining-countries")]
    UnknownForm(String),
    #[error("{0}")]
    NotApplicable(String),
    #[error("the certificate has no verdict under {rules}, the rule set in force on {date}: make one with --rules {rules}")]
    NoVerdict { rules: String, date: String },
}

/// The rule set a form's verdict must be under: the preset of its
/// jurisdiction in force on the date of entry (`None` for a form that
/// states no verdict).
pub fn rules_for(form: &str, date: &str) -> Result<Option<&'static str>, FilingError> {
    let jurisdiction = match form {
        "us-country-of-mining" => "us-",
        "eu-due-diligence" => "eu-",
        "kp-mining-countries" => return Ok(None),
        other => return Err(FilingError::UnknownForm(other.chars().take(64).collect())),
    };
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| FilingError::NotApplicable(format!("{date:?} is not a date YYYY-MM-DD")))?;
    custody_projection::rules::in_force(jurisdiction, day)
        .map(Some)
        .ok_or_else(|| FilingError::NotApplicable(format!("no {jurisdiction}rule set on diamonds of Russian origin was in force on {date}")))
}

/// Carats per country of mining: the lot's hundredths split by the shares
/// (largest remainder), so the lines add up to the lot.
fn carats_by_country(origin: &Value) -> Vec<(String, String, String)> {
    let total: u64 = origin["carats"].as_str().and_then(|c| c.parse::<custody_proto::Carats>().ok()).map_or(0, |c| c.hundredths());
    let shares: Vec<(String, String, u64)> = origin["mine_origin"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let share = s["share"].as_str().unwrap_or("0").to_owned();
            let tt = share.parse::<custody_proto::Share>().map_or(0, |s| u64::from(s.ten_thousandths()));
            (s["country"].as_str().unwrap_or("unknown").to_owned(), share, tt)
        })
        .collect();
    let mut parts: Vec<(usize, u64, u64)> = shares.iter().enumerate().map(|(i, s)| (i, total * s.2 / 10_000, total * s.2 % 10_000)).collect();
    let mut left = total.saturating_sub(parts.iter().map(|p| p.1).sum());
    parts.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    for p in parts.iter_mut() {
        if left == 0 {
            break;
        }
        if p.2 > 0 {
            p.1 += 1;
            left -= 1;
        }
    }
    parts.sort_by_key(|p| p.0);
    parts.into_iter().map(|(i, h, _)| (shares[i].0.clone(), custody_proto::units::show_hundredths(h), shares[i].1.clone())).collect()
}

/// The certificate's verdict under the form's rule set (by exact name:
/// the caller has checked that a preset's name carries the preset's text).
fn verdict_for(form: &str, cert: &OriginCertificate) -> Result<Option<Value>, FilingError> {
    let Some(rules) = rules_for(form, &cert.date)? else { return Ok(None) };
    let verdict = cert.claims.admissibility.iter().find(|a| a["rules"] == rules);
    verdict.cloned().map(Some).ok_or_else(|| FilingError::NoVerdict { rules: rules.to_owned(), date: cert.date.clone() })
}

/// Fills `form` from the certificate whose id (blake3 of its file) is `id`,
/// and what only the filer knows from `profile`, signed on `today`.
pub fn fill(form: &str, cert: &OriginCertificate, id: &str, profile: &Profile, today: &str) -> Result<Value, FilingError> {
    let o = &cert.claims.origin;
    let backed = json!({"id": id, "lot": cert.lot, "date": cert.date, "checkpoint": {"tree_size": cert.checkpoint.tree_size, "root": cert.checkpoint.root}});
    let lines: Vec<Value> =
        carats_by_country(o).into_iter().map(|(country, carats, share)| json!({"country_of_mining": country, "carats": carats, "share": share})).collect();
    let countries: Vec<&str> = lines.iter().filter_map(|l| l["country_of_mining"].as_str()).collect();
    let traced = o["traced"].as_bool().unwrap_or(false);
    match form {
        "us-country-of-mining" => {
            let verdict = verdict_for(form, cert)?;
            let russian = countries.contains(&"RU");
            let unknown = countries.contains(&"unknown") || !traced;
            let warnings: Vec<&str> = o["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            // Partly Russian yet admissible under the determination in force
            // (a stone below its carat threshold): not covered by it, which
            // is not the same as certifying it Russia-free.
            let admitted = verdict.as_ref().is_some_and(|a| a["verdict"] == "admissible");
            let certification = if russian && admitted {
                let rules = verdict.as_ref().map_or(Value::Null, |a| a["rules"].clone());
                let why: Vec<&str> = verdict
                    .as_ref()
                    .and_then(|a| a["reasons"].as_array())
                    .into_iter()
                    .flatten()
                    .filter(|r| r["finding"] == "admissible" && r["text"].as_str().is_some_and(|t| t.contains("threshold")))
                    .filter_map(|r| r["text"].as_str())
                    .collect();
                json!({"text": null, "not_covered": format!(
                    "part of this lot was mined in the Russian Federation, but the determination in force ({}) does not cover it on {}: {}",
                    rules.as_str().unwrap_or("?"), cert.date, if why.is_empty() { "see the verdict's reasons".to_owned() } else { why.join("; ") }
                )})
            } else if russian {
                json!({"text": null, "cannot_certify": "part of this lot was mined in the Russian Federation"})
            } else if unknown {
                json!({"text": null, "cannot_certify": "part of this lot has unknown or only claimed origin"})
            } else if !warnings.is_empty() {
                json!({"text": null, "cannot_certify": format!("the lot's history carries warnings an importer must resolve first: {}", warnings.join("; "))})
            } else {
                json!({"text": US_SELF_CERTIFICATION})
            };
            let signer = profile.signer.clone().unwrap_or_default();
            let mut missing: Vec<&str> = Vec::new();
            for (field, given) in [
                ("importer_of_record", profile.importer_of_record.is_some()),
                ("entry_number", profile.entry_number.is_some()),
                ("signer.name", signer.name.is_some()),
                ("signer.title", signer.title.is_some()),
            ] {
                if !given {
                    missing.push(field);
                }
            }
            Ok(json!({
                "form": form,
                "lot": cert.lot,
                "carats": o["carats"],
                "hts_subheading": hts(o),
                "country_of_origin": o["customs_origin"],
                "lines": lines,
                "self_certification": certification,
                "verdict": verdict.map(|a| json!({"rules": a["rules"], "verdict": a["verdict"]})),
                "importer_of_record": profile.importer_of_record,
                "entry_number": profile.entry_number,
                "signer": {"name": signer.name, "title": signer.title, "date": today},
                "documents": documents(o),
                "missing": missing,
                "certificate": backed,
            }))
        }
        "eu-due-diligence" => {
            let carats = o["carats"].as_str().and_then(|c| c.parse::<custody_proto::Carats>().ok()).map_or(0, |c| c.hundredths());
            if o["state"] != "polished" || carats <= 50 {
                return Err(FilingError::NotApplicable(format!(
                    "the EU due diligence statement concerns polished stones over 0.50 ct; {} is {} and {} ct",
                    cert.lot,
                    o["state"].as_str().unwrap_or("?"),
                    o["carats"].as_str().unwrap_or("?")
                )));
            }
            let verdict = verdict_for(form, cert)?;
            let verified: Vec<&Value> = o["path"].as_array().into_iter().flatten().filter(|s| s["vouched"]["by"] == "verified").collect();
            Ok(json!({
                "form": form,
                "lot": cert.lot,
                "carats": o["carats"],
                "countries_of_mining": lines,
                "country_of_origin": o["customs_origin"],
                "kp_origin": o["kp_origin"],
                "custody_model": o["custody_model"],
                "traced": traced,
                "transformations": o["transformations"],
                "verified_by": verified.iter().map(|s| json!({"verifier": s["vouched"]["verifier"], "verification": s["vouched"]["verification"], "seq": s["seq"]})).collect::<Vec<_>>(),
                "warnings": o["warnings"],
                "verdict": verdict.map(|a| json!({"rules": a["rules"], "verdict": a["verdict"], "reasons": a["reasons"]})),
                "certificate": backed,
            }))
        }
        "kp-mining-countries" => {
            if o["state"] != "rough" {
                return Err(FilingError::NotApplicable(format!("a KP certificate covers rough; {} is {}", cert.lot, o["state"].as_str().unwrap_or("?"))));
            }
            let complete = traced && !countries.contains(&"unknown");
            Ok(json!({
                "form": form,
                "lot": cert.lot,
                "carats": o["carats"],
                "countries_of_mining": lines.iter().map(|l| json!({"country": l["country_of_mining"], "percent": percent(l["share"].as_str().unwrap_or("0")), "carats": l["carats"]})).collect::<Vec<_>>(),
                "kp_origin": o["kp_origin"],
                "every_country_known": complete,
                "certificate": backed,
            }))
        }
        other => Err(FilingError::UnknownForm(other.chars().take(64).collect())),
    }
}

/// `"0.4000"` → `"40.00"`.
fn percent(share: &str) -> String {
    let tt = share.parse::<custody_proto::Share>().map_or(0, |s| s.ten_thousandths());
    format!("{}.{:02}", tt / 100, tt % 100)
}

/// The filing as CSV (header first): one row per country, each carrying
/// everything else the JSON says too (the country of origin, the verdict,
/// the self-certification, the certificate), flattened to dotted columns
/// ([`custody_wire::table::csv`]); a field of the lot that a row also has
/// is `lot_<field>`.
pub fn csv(filing: &Value) -> String {
    let rows_key = if filing.get("lines").is_some() { "lines" } else { "countries_of_mining" };
    let rows = filing.get(rows_key).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut shared = filing.clone();
    if let Some(fields) = shared.as_object_mut() {
        fields.remove(rows_key);
    }
    custody_wire::table::csv(&rows, &[], &shared, "lot")
}
