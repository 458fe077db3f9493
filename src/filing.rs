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
//! - `kp-certificate`: the fields of a KP certificate (KPCS core document,
//!   Annex I) for the lot's last export.
//! - `uk-gbsan0002`: the record an importer keeps under the UK's general
//!   trade licence GBSAN0002 and Notice to Importers 2953 for diamonds
//!   processed in a third country.
//!
//! Each field is filled from the certificate's entries (read as events:
//! exports, processing, registrations naming each party) where the ledger
//! knows it, from the filer's profile where only the filer does, and is
//! listed under `missing` otherwise; nothing is invented.

use std::collections::BTreeMap;

use custody_proto::certificate::OriginCertificate;
use serde_json::{json, Value};

pub const FORMS: [&str; 5] = ["us-country-of-mining", "eu-due-diligence", "kp-mining-countries", "kp-certificate", "uk-gbsan0002"];

/// Where each form's fields come from, cited in README ("Filings") and
/// in each filing (`source`).
pub const SOURCES: [(&str, &str); 5] = [
    ("us-country-of-mining", "EO 14068 as amended by EO 14114; OFAC determinations of 2023-12-22 and 2024-03-08; CBP CSMS #59635420; OFAC GL 104 and 104A"),
    ("eu-due-diligence", "Council Regulation (EU) 833/2014 art. 3p and Annex XXXVIIIA as amended (12th, 14th and 16th packages); AWDC G7 import guidelines"),
    ("kp-mining-countries", "Council Regulation (EU) 833/2014 art. 3p as amended by Reg. 2025/395 (16th package): mixed rough from 2025-03-01 with every country of mining"),
    ("kp-certificate", "Kimberley Process Certification Scheme core document, Annex I (minimum requirements of a certificate)"),
    ("uk-gbsan0002", "UK General Trade Licence GBSAN0002 (regulations 46Z16R-46Z16U, Russia (Sanctions) (EU Exit) Regulations 2019); Notice to Importers 2953, guidance on third-country processed Russian diamonds"),
];

/// OFAC's general licences for Russian-mined diamonds that left Russia
/// before the determinations' dates: (name, first day, last day). GL 104
/// (2024-08-23) ran to 2025-09-01; GL 104A (August 2025) to 2026-09-01.
/// A date of entry past the last is filed without a licence statement and
/// says so: check OFAC for a newer one.
const US_GENERAL_LICENCES: [(&str, &str, &str); 2] =
    [("OFAC General License No. 104", "2024-08-23", "2025-08-31"), ("OFAC General License No. 104A", "2025-09-01", "2026-08-31")];

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
    /// For `kp-certificate`: the exporting country's KP authority, and the
    /// certificate's expiry date, which only the authority sets.
    pub kp_issuing_authority: Option<String>,
    pub kp_expiry_date: Option<String>,
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
    #[error("no form {0:?}; forms are us-country-of-mining, eu-due-diligence, kp-mining-countries, kp-certificate, uk-gbsan0002")]
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
        "uk-gbsan0002" => "uk-",
        "kp-mining-countries" | "kp-certificate" => return Ok(None),
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

/// What the certificate's entries say, read as events: each signer's name
/// and country (from its registration, which a certificate carries), each
/// lot's carats and state as it was made, and every step, in ledger order.
struct History {
    /// (seq, the event as JSON: `kind`, `actor`, `occurred_at`, ...).
    events: Vec<(u64, Value)>,
    parties: BTreeMap<String, (String, String)>,
    lots: BTreeMap<String, (String, &'static str)>,
}

impl History {
    fn of(cert: &OriginCertificate) -> History {
        let mut h = History { events: Vec::new(), parties: BTreeMap::new(), lots: BTreeMap::new() };
        for e in &cert.entries {
            let event = custody_proto::Opened::payload_of(e.envelope.as_bytes())
                .ok()
                .and_then(|p| custody_proto::Event::decode(&p).ok())
                .and_then(|ev| serde_json::to_value(ev).ok());
            let Some(ev) = event else { continue };
            let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
            match ev["kind"].as_str() {
                Some("actor.registered") => {
                    h.parties.insert(text(&ev["subject"]), (text(&ev["name"]), text(&ev["country"])));
                }
                Some("mined") => {
                    h.lots.insert(text(&ev["lot"]), (text(&ev["carats"]), "rough"));
                }
                Some("declared") => {
                    let state = if ev["state"] == "polished" { "polished" } else { "rough" };
                    h.lots.insert(text(&ev["lot"]), (text(&ev["carats"]), state));
                }
                Some(kind @ ("split" | "merged" | "processed")) => {
                    let from = if kind == "merged" { ev["lots"][0].clone() } else { ev["lot"].clone() };
                    let inherited = h.lots.get(from.as_str().unwrap_or("")).map_or("rough", |l| l.1);
                    let state = if kind == "processed" && ev["process"] == "cutting_polishing" { "polished" } else { inherited };
                    let into: Vec<Value> = if kind == "merged" { vec![ev["into"].clone()] } else { ev["into"].as_array().cloned().unwrap_or_default() };
                    for p in into {
                        h.lots.insert(text(&p["lot"]), (text(&p["carats"]), state));
                    }
                }
                _ => {}
            }
            h.events.push((e.seq, ev));
        }
        h
    }

    /// A party by key: its registered name and country, and the key.
    fn party(&self, key: &str) -> Value {
        match self.parties.get(key) {
            Some((name, country)) => json!({"name": name, "country": country, "key": key}),
            None => json!({"name": null, "country": null, "key": key}),
        }
    }

    /// The exports of the certificate's history, oldest first.
    fn exports(&self) -> impl Iterator<Item = &(u64, Value)> {
        self.events.iter().filter(|(_, e)| e["kind"] == "exported")
    }

    /// The last export naming `lot`.
    fn last_export(&self, lot: &str) -> Option<&(u64, Value)> {
        self.exports().filter(|(_, e)| e["lots"].as_array().is_some_and(|l| l.iter().any(|x| x == lot))).last()
    }

    /// One export as its paper says it: number, date, parties, parcels,
    /// carats and value.
    fn shipment(&self, seq: u64, e: &Value) -> Value {
        let lots: Vec<&str> = e["lots"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let hundredths: u64 =
            lots.iter().filter_map(|l| self.lots.get(*l)).filter_map(|(c, _)| c.parse::<custody_proto::Carats>().ok()).map(|c| c.hundredths()).sum();
        let exporter = self.party(e["actor"].as_str().unwrap_or(""));
        let mut importer = self.party(e["to"].as_str().unwrap_or(""));
        importer["country"] = e["to_country"].clone();
        json!({
            "number": e["certificate"]["number"],
            "date": e["occurred_at"].as_str().map(|t| t.chars().take(10).collect::<String>()),
            "from_country": exporter["country"],
            "exporter": exporter,
            "importer": importer,
            "value_usd": e["certificate"]["value_usd"],
            "parcels": lots.len(),
            "carats": custody_proto::units::show_hundredths(hundredths),
            "packing_list": lots.iter().map(|l| {
                let carats = self.lots.get(*l).map(|c| c.0.clone());
                let at_least_half = carats.as_deref().and_then(|c| c.parse::<custody_proto::Carats>().ok()).is_some_and(|c| c.hundredths() >= 50);
                json!({"lot": l, "carats": carats, "at_least_0_50_ct": at_least_half})
            }).collect::<Vec<_>>(),
            "seq": seq,
        })
    }

    /// Exports of rough out of a country where part of it was mined: the
    /// original KP certificates, and when the goods left their country of
    /// mining.
    fn departures(&self, mined_in: &[&str]) -> Vec<Value> {
        self.exports()
            .filter(|(_, e)| {
                let country = self.parties.get(e["actor"].as_str().unwrap_or("")).map_or("", |p| p.1.as_str());
                let rough = e["lots"].as_array().into_iter().flatten().all(|l| self.lots.get(l.as_str().unwrap_or("")).is_none_or(|x| x.1 == "rough"));
                rough && mined_in.contains(&country)
            })
            .map(|(seq, e)| {
                let s = self.shipment(*seq, e);
                json!({"country_of_mining": s["from_country"], "left_on": s["date"], "kp_certificate": s["number"], "to_country": e["to_country"], "seq": seq})
            })
            .collect()
    }

    /// Each processing: where, by whom (the facility), how, when.
    fn processing(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|(_, e)| e["kind"] == "processed")
            .map(|(seq, e)| {
                let facility = self.party(e["actor"].as_str().unwrap_or(""));
                json!({"country": e["country"], "facility": facility, "process": e["process"], "date": e["occurred_at"].as_str().map(|t| t.chars().take(10).collect::<String>()), "seq": seq})
            })
            .collect()
    }
}

/// The countries of the lot's path steps that `keep`, in order, each once.
fn countries_of(origin: &Value, keep: impl Fn(&Value) -> bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in origin["path"].as_array().into_iter().flatten().filter(|s| keep(s)).filter_map(|s| s["country"].as_str()) {
        if !out.iter().any(|o| o == c) {
            out.push(c.to_owned());
        }
    }
    out
}

/// The countries the lot's path went through, in order, each once.
fn route(origin: &Value) -> Vec<String> {
    countries_of(origin, |_| true)
}

/// The countries the goods passed through: those of every step but the
/// mining ones, without the country they are in now.
fn transit(origin: &Value) -> Vec<String> {
    let here = origin["path"].as_array().and_then(|p| p.last()).and_then(|s| s["country"].as_str()).unwrap_or("");
    countries_of(origin, |s| s["kind"] != "mined" && s["country"] != here)
}

/// The documents of `types` the path names, by hash.
fn documents_of(origin: &Value, types: &[&str]) -> Vec<Value> {
    documents(origin).into_iter().filter(|d| d["type"].as_str().is_some_and(|t| types.contains(&t))).collect()
}

/// What `profile` lacks of `fields`, by name.
fn lacking(fields: &[(&'static str, bool)]) -> Vec<&'static str> {
    fields.iter().filter(|(_, given)| !given).map(|(f, _)| *f).collect()
}

/// The statement that an OFAC general licence authorises a partly
/// Russian stone grandfathered under the determination (it left Russia
/// before the date), or why none is given.
fn general_licence(verdict: Option<&Value>, date: &str) -> Value {
    let grandfathered: Vec<&Value> = verdict
        .and_then(|a| a["reasons"].as_array())
        .into_iter()
        .flatten()
        .filter(|r| r["finding"] == "admissible" && r["country"] == "RU" && r["text"].as_str().is_some_and(|t| t.contains("grandfathered")))
        .collect();
    let Some(reason) = grandfathered.first() else { return Value::Null };
    // The determination's own date: its mass left Russia before it.
    let before = reason["effective"].as_str().unwrap_or("").to_owned();
    match US_GENERAL_LICENCES.iter().find(|(_, from, to)| *from <= date && date <= *to) {
        Some((licence, ..)) => json!({
            "licence": licence,
            "text": format!("The non-industrial diamonds in this entry, mined wholly or in part in the Russian Federation, were physically located outside the Russian Federation before {before} and have not been exported or re-exported from the Russian Federation since; their importation is authorized by {licence}."),
            "left_russia_before": before,
            "rule": reason["rule"],
        }),
        None => json!({
            "licence": null,
            "left_russia_before": before,
            "rule": reason["rule"],
            "why_none": format!("no OFAC general licence for such diamonds is known in force on {date} (GL 104A ran to 2026-08-31): check OFAC for a newer one, or a specific licence"),
        }),
    }
}

/// Fills `form` from the certificate whose id (blake3 of its file) is `id`,
/// and what only the filer knows from `profile`, signed on `today`.
pub fn fill(form: &str, cert: &OriginCertificate, id: &str, profile: &Profile, today: &str) -> Result<Value, FilingError> {
    let mut filing = fill_form(form, cert, id, profile, today)?;
    if let (Some(fields), Some((_, source))) = (filing.as_object_mut(), SOURCES.iter().find(|(f, _)| *f == form)) {
        fields.insert("source".into(), json!(source));
    }
    Ok(filing)
}

fn fill_form(form: &str, cert: &OriginCertificate, id: &str, profile: &Profile, today: &str) -> Result<Value, FilingError> {
    let o = &cert.claims.origin;
    let backed = json!({"id": id, "lot": cert.lot, "date": cert.date, "checkpoint": {"tree_size": cert.checkpoint.tree_size, "root": cert.checkpoint.root}});
    let lines: Vec<Value> =
        carats_by_country(o).into_iter().map(|(country, carats, share)| json!({"country_of_mining": country, "carats": carats, "share": share})).collect();
    let countries: Vec<&str> = lines.iter().filter_map(|l| l["country_of_mining"].as_str()).collect();
    let traced = o["traced"].as_bool().unwrap_or(false);
    let history = History::of(cert);
    let signer = profile.signer.clone().unwrap_or_default();
    let filer =
        [("importer_of_record", profile.importer_of_record.is_some()), ("signer.name", signer.name.is_some()), ("signer.title", signer.title.is_some())];
    let route = route(o);
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
            let licence = if russian && admitted { general_licence(verdict.as_ref(), &cert.date) } else { Value::Null };
            let certification = if russian && admitted && !licence.is_null() {
                json!({"text": null, "general_licence": licence["licence"], "cannot_certify": "part of this lot was mined in the Russian Federation; it left before the determination's date (see general_licence)"})
            } else if russian && admitted {
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
            let mut missing = lacking(&[filer[0], ("entry_number", profile.entry_number.is_some()), filer[1], filer[2]]);
            if licence["licence"].is_null() && !licence.is_null() {
                missing.push("general_licence");
            }
            Ok(json!({
                "form": form,
                "lot": cert.lot,
                "carats": o["carats"],
                "hts_subheading": hts(o),
                "country_of_origin": o["customs_origin"],
                "lines": lines,
                "self_certification": certification,
                "general_licence": licence,
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
            let rough = o["state"] == "rough";
            if !rough && carats < 50 {
                return Err(FilingError::NotApplicable(format!(
                    "the EU due diligence statement concerns rough, and polished stones of 0.50 ct and above; {} is {} and {} ct",
                    cert.lot,
                    o["state"].as_str().unwrap_or("?"),
                    o["carats"].as_str().unwrap_or("?")
                )));
            }
            let verdict = verdict_for(form, cert)?;
            let verified: Vec<&Value> = o["path"].as_array().into_iter().flatten().filter(|s| s["vouched"]["by"] == "verified").collect();
            let invoice = history.last_export(&cert.lot).map(|(seq, e)| history.shipment(*seq, e));
            // Every country the goods were in but where they were mined and
            // where they are now: art. 3p bans goods that transited Russia.
            let transit = transit(o);
            let transited_russia = transit.iter().any(|c| c == "RU");
            // Mixed rough entering the EU from 2025-03-01 needs a KP
            // certificate naming every country of mining.
            let mixed_rough = rough && countries.len() > 1 && cert.date.as_str() >= "2025-03-01";
            let every_country = traced && !countries.contains(&"unknown");
            let russian = countries.contains(&"RU") || o["customs_origin"] == "RU" || route.iter().any(|c| c == "RU");
            let declaration = if russian {
                json!({"text": null, "cannot_declare": "part of this lot was mined in, processed in, exported from or transited through the Russian Federation"})
            } else if !every_country {
                json!({"text": null, "cannot_declare": "part of this lot has unknown or only claimed origin"})
            } else {
                json!({"text": EU_DECLARATION})
            };
            let mut missing = lacking(&filer);
            if invoice.is_none() {
                missing.push("invoice");
            }
            Ok(json!({
                "form": form,
                "lot": cert.lot,
                "carats": o["carats"],
                "state": o["state"],
                "cn_code": cn(o),
                "countries_of_mining": lines,
                "country_of_origin": o["customs_origin"],
                "kp_origin": o["kp_origin"],
                "kp_certificate": if rough { invoice.as_ref().map_or(Value::Null, |i| i["number"].clone()) } else { Value::Null },
                "kp_certificate_lists_every_country": if mixed_rough { Value::from(every_country) } else { Value::Null },
                "custody_model": o["custody_model"],
                "traced": traced,
                "countries_of_transit": transit,
                "transited_russia": transited_russia,
                "invoice": invoice.as_ref().map(|i| json!({"number": i["number"], "date": i["date"], "seller": i["exporter"], "buyer": i["importer"], "total_value_usd": i["value_usd"], "total_carats": i["carats"], "seq": i["seq"]})),
                "packing_list": invoice.as_ref().map_or(Value::Null, |i| i["packing_list"].clone()),
                "transformations": o["transformations"],
                "verified_by": verified.iter().map(|s| json!({"verifier": s["vouched"]["verifier"], "verification": s["vouched"]["verification"], "seq": s["seq"]})).collect::<Vec<_>>(),
                "warnings": o["warnings"],
                "declaration": declaration,
                "verdict": verdict.map(|a| json!({"rules": a["rules"], "verdict": a["verdict"], "reasons": a["reasons"]})),
                "importer": profile.importer_of_record,
                "signer": {"name": signer.name, "title": signer.title, "date": today},
                "documents": documents(o),
                "missing": missing,
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
        "kp-certificate" => {
            if o["state"] != "rough" {
                return Err(FilingError::NotApplicable(format!("a KP certificate covers rough; {} is {}", cert.lot, o["state"].as_str().unwrap_or("?"))));
            }
            let Some((seq, export)) = history.last_export(&cert.lot) else {
                return Err(FilingError::NotApplicable(format!("{} has no export on the ledger: a KP certificate goes with an export", cert.lot)));
            };
            let shipment = history.shipment(*seq, export);
            let mixed = countries.len() > 1;
            let missing = lacking(&[("issuing_authority", profile.kp_issuing_authority.is_some()), ("expiry_date", profile.kp_expiry_date.is_some())]);
            Ok(json!({
                "form": form,
                "lot": cert.lot,
                "certificate_number": shipment["number"],
                "issuing_country": shipment["from_country"],
                "issuing_authority": profile.kp_issuing_authority,
                "issue_date": shipment["date"],
                "expiry_date": profile.kp_expiry_date,
                "exporter": shipment["exporter"],
                "importer": shipment["importer"],
                "carats": shipment["carats"],
                "value_usd": shipment["value_usd"],
                "number_of_parcels": shipment["parcels"],
                "hs_code": hts(o),
                "country_of_origin": if mixed { Value::from("mixed") } else { Value::from(countries.first().copied().unwrap_or("unknown")) },
                "countries_of_mining": lines.iter().map(|l| json!({"country": l["country_of_mining"], "percent": percent(l["share"].as_str().unwrap_or("0")), "carats": l["carats"]})).collect::<Vec<_>>(),
                "every_country_known": traced && !countries.contains(&"unknown"),
                "export_seq": seq,
                "missing": missing,
                "certificate": backed,
            }))
        }
        "uk-gbsan0002" => {
            let verdict = verdict_for(form, cert)?;
            let processing = history.processing();
            let departures = history.departures(&countries);
            let invoice_or_lading = documents_of(o, &["invoice", "transport_document"]);
            // The licence covers diamonds mined in Russia and processed in
            // a third country that were outside Russia on 1 March 2024 and
            // since (the verdict's grandfathered 46Z16R-U findings).
            let russian = countries.contains(&"RU");
            let third_country = processing.iter().any(|p| p["country"] != "RU");
            let grandfathered = verdict.as_ref().and_then(|a| a["reasons"].as_array()).into_iter().flatten().any(|r| {
                r["rule"].as_str().is_some_and(|id| id.starts_with("46Z16R"))
                    && r["finding"] == "admissible"
                    && r["text"].as_str().is_some_and(|t| t.contains("grandfathered"))
            });
            let licence = json!({
                "number": "GBSAN0002",
                "relied_on": russian && third_country && grandfathered,
                "why": if !russian { "no part of it was mined in Russia: the licence is not needed".to_owned() }
                    else if !third_country { "it was not processed in a third country: the licence does not cover it".to_owned() }
                    else if grandfathered { "mined in Russia, processed in a third country, outside Russia since before 1 March 2024".to_owned() }
                    else { "mined in Russia and processed in a third country, but not shown outside Russia since before 1 March 2024: the licence does not cover it".to_owned() },
            });
            let mut missing = lacking(&filer);
            if invoice_or_lading.is_empty() {
                missing.push("invoice_or_bill_of_lading");
            }
            if departures.len() < countries.iter().filter(|c| **c != "unknown").count() {
                missing.push("date_left_country_of_mining");
            }
            Ok(json!({
                "form": form,
                "lot": cert.lot,
                "carats": o["carats"],
                "commodity_code": uk_commodity(o),
                "countries_of_mining": lines,
                "left_country_of_mining": departures,
                "original_kp_certificates": departures.iter().map(|d| d["kp_certificate"].clone()).collect::<Vec<_>>(),
                "processing": processing,
                "countries_passed_through": route,
                "invoice_or_bill_of_lading": invoice_or_lading,
                "licence": licence,
                "verdict": verdict.map(|a| json!({"rules": a["rules"], "verdict": a["verdict"], "reasons": a["reasons"]})),
                "importer": profile.importer_of_record,
                "signer": {"name": signer.name, "title": signer.title, "date": today},
                "missing": missing,
                "certificate": backed,
            }))
        }
        other => Err(FilingError::UnknownForm(other.chars().take(64).collect())),
    }
}

/// The declaration of the EU due diligence statement, in custody's words
/// (the importer states it; the ledger backs each fact it rests on).
pub const EU_DECLARATION: &str = "I declare that, after due diligence, the diamonds in this shipment were not mined, processed or produced in the Russian Federation, were not exported from it and did not transit through it, as Article 3p of Council Regulation (EU) No 833/2014 requires.";

/// The EU's Combined Nomenclature code: 7102 10 00 unsorted, 7102 31 00
/// sorted rough, 7102 39 00 worked.
fn cn(origin: &Value) -> &'static str {
    match hts(origin) {
        "7102.39" => "7102 39 00",
        "7102.31" => "7102 31 00",
        _ => "7102 10 00",
    }
}

/// The UK commodity code the licence names: 7102 10 (unsorted), ex 7102 31
/// (simply sawn, cleaved or bruted), 7102 39 (worked).
fn uk_commodity(origin: &Value) -> &'static str {
    match hts(origin) {
        "7102.39" => "7102 39",
        "7102.31" => "ex 7102 31",
        _ => "7102 10",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A us-2024 verdict for a partly Russian stone whose Russian rough
    /// left Russia before the 0.50 ct determination's date.
    fn grandfathered() -> Value {
        json!({"rules": "us-2024", "verdict": "admissible", "reasons": [
            {"rule": "ofac-2024-09-0.5ct", "finding": "admissible", "country": "RU", "effective": "2024-09-01", "text": "its RU mass left RU before 2024-09-01: grandfathered"}
        ]})
    }

    #[test]
    fn a_grandfathered_stone_names_the_general_licence_in_force_on_its_date() {
        let v = grandfathered();
        let gl = general_licence(Some(&v), "2025-01-10");
        assert_eq!(gl["licence"], "OFAC General License No. 104");
        assert_eq!(gl["left_russia_before"], "2024-09-01");
        assert!(gl["text"].as_str().unwrap().contains("outside the Russian Federation before 2024-09-01"), "{gl}");
        assert_eq!(general_licence(Some(&v), "2026-03-02")["licence"], "OFAC General License No. 104A");
        // Past the last licence known: no statement, and why.
        let late = general_licence(Some(&v), "2026-12-02");
        assert!(late["licence"].is_null() && late["why_none"].as_str().unwrap().contains("2026-12-02"), "{late}");
        // Before GL 104 was issued: none either.
        assert!(general_licence(Some(&v), "2024-08-01")["licence"].is_null());
        // A stone not grandfathered gets no statement at all.
        let below = json!({"verdict": "admissible", "reasons": [{"rule": "ofac-2024-09-0.5ct", "finding": "admissible", "country": "RU", "text": "0.30 ct is below the 0.50 ct threshold"}]});
        assert!(general_licence(Some(&below), "2025-01-10").is_null());
    }
}
