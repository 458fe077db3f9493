//! The origin report (`GET /v1/lots/{lot}/report.pdf`): one A4 document an
//! officer can print or file, in the spirit of a lab's grading report:
//! where the stone's carats were mined, its origins, the verdict of each
//! market's rule set in force on the date and why, its journey, and a QR
//! code that opens the page where its origin certificate is checked. It
//! summarises custody's answer; the certificate proves it. Pure: answers
//! in, PDF bytes out.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};
use serde_json::Value;

/// A4, in points.
const WIDTH: f32 = 595.0;
const HEIGHT: f32 = 842.0;
const MARGIN: f32 = 50.0;
/// Side of the QR code, in points.
const QR_SIDE: f32 = 110.0;

/// What goes into a report.
pub struct Report<'a> {
    pub origin: &'a Value,
    /// Each market's verdict: (the rule set's title, its admissibility answer).
    pub verdicts: Vec<(String, &'a Value)>,
    /// The date of entry asked about.
    pub date: &'a str,
    /// Where the page checks this lot's certificate (the QR code's text).
    pub check_url: &'a str,
    /// When the report was made (RFC 3339).
    pub made_at: &'a str,
}

/// One line of the document: its size, weight and text; or the row the
/// QR code takes, with its caption.
struct Line {
    size: f32,
    bold: bool,
    text: String,
    qr: bool,
}

fn line(size: f32, bold: bool, text: impl Into<String>) -> Line {
    Line { size, bold, text: text.into(), qr: false }
}

impl Line {
    /// The height it takes on the page.
    fn height(&self) -> f32 {
        if self.qr {
            QR_SIDE + 8.0
        } else {
            self.size * 1.35
        }
    }
}

/// The report as a PDF.
pub fn pdf(r: &Report<'_>) -> Vec<u8> {
    let o = r.origin;
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let lot = text(&o["lot"]);
    let mut lines = vec![line(18.0, true, format!("Origin report: {lot}"))];
    lines.extend(wrapped(&format!("Made {} from the custody ledger up to entry {}, for entry on {}.", r.made_at, o["as_of_seq"], r.date), 9.5, false));
    lines.extend([
        Line { size: 9.5, bold: false, text: "Scan to check its origin certificate on the ledger's page.".into(), qr: true },
        line(12.0, true, "The stone"),
        line(9.5, false, format!("{} ct, {}.", text(&o["carats"]), text(&o["state"]))),
        line(12.0, true, "Where its carats were mined"),
    ]);
    for s in o["mine_origin"].as_array().into_iter().flatten() {
        let share = text(&s["share"]);
        let percent = share.parse::<f64>().map_or(share.clone(), |f| format!("{:.2} %", f * 100.0));
        lines.push(line(9.5, false, format!("  {}: {percent} of its weight", country(&text(&s["country"])))));
    }
    let traced = if o["traced"] == true { "every step back to the mines is on the ledger" } else { "part of its history is only declared" };
    lines.extend(wrapped(&format!("Customs origin (last cut and polished in): {}.", country(&text(&o["customs_origin"]))), 9.5, false));
    lines.extend(wrapped(&format!("Kimberley Process origin: {}. Custody model: {}; {traced}.", text(&o["kp_origin"]), text(&o["custody_model"])), 9.5, false));
    lines.push(line(12.0, true, format!("May it enter? (date of entry {})", r.date)));
    for (title, a) in &r.verdicts {
        let verdict = text(&a["verdict"]);
        let word = match verdict.as_str() {
            "admissible" => "Yes",
            "prohibited" => "No",
            _ => "Cannot tell",
        };
        lines.extend(wrapped(&format!("{title}: {word} ({verdict})"), 10.0, true));
        let deciding = a["reasons"].as_array().into_iter().flatten().find(|x| x["finding"] == a["verdict"] && verdict != "admissible");
        let why = deciding.map_or_else(|| "no rule of this rule set stops it".to_owned(), |x| text(&x["text"]));
        lines.extend(wrapped(&format!("  {why}"), 9.5, false));
    }
    lines.push(line(12.0, true, "Journey (each step is a signed ledger entry)"));
    for step in o["path"].as_array().into_iter().flatten() {
        let vouched = match step["vouched"]["by"].as_str() {
            Some("verified") => format!("verified by {}", text(&step["vouched"]["verifier"])),
            Some("evidenced") => "evidenced by documents".to_owned(),
            _ => "declared".to_owned(),
        };
        let entry = format!("  {}  {}: {} [{vouched}; entry {}]", text(&step["date"]), country(&text(&step["country"])), text(&step["note"]), step["seq"]);
        lines.extend(wrapped(&entry, 9.0, false));
    }
    for w in o["warnings"].as_array().into_iter().flatten() {
        lines.extend(wrapped(&format!("Warning: {}", text(w)), 9.5, false));
    }
    lines.push(line(9.5, false, ""));
    lines.extend(wrapped(
        "This report summarises custody's answer; it proves nothing by itself. The origin certificate does: it carries every ledger entry the answer rests on, proven against a checkpoint the ledger signed, and anyone checks it with the ledger's public key alone (custody verify-certificate, or the page the code above opens).",
        8.5,
        false,
    ));
    lines.push(line(8.5, false, format!("Check it: {}", r.check_url)));
    render(&lines, r.check_url)
}

/// `text` in lines as wide as the page holds at `size` (Helvetica's
/// average letter is about half its size, bold a little more), broken at
/// spaces.
fn wrapped(text: &str, size: f32, bold: bool) -> Vec<Line> {
    let letter = size * if bold { 0.58 } else { 0.5 };
    let chars = ((WIDTH - 2.0 * MARGIN) / letter) as usize;
    let mut out = Vec::new();
    let mut current = String::new();
    for word in text.split(' ') {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > chars {
            out.push(line(size, bold, std::mem::take(&mut current)));
            current.push_str("    ");
        }
        if !current.is_empty() && !current.ends_with("    ") {
            current.push(' ');
        }
        current.push_str(word);
    }
    out.push(line(size, bold, current));
    out
}

/// A country's name and code ("Russia (RU)") for the countries the
/// diamond trade names most; others by code.
fn country(code: &str) -> String {
    const NAMES: [(&str, &str); 28] = [
        ("AE", "United Arab Emirates"),
        ("AO", "Angola"),
        ("AU", "Australia"),
        ("BE", "Belgium"),
        ("BW", "Botswana"),
        ("CA", "Canada"),
        ("CD", "DR Congo"),
        ("CH", "Switzerland"),
        ("CN", "China"),
        ("DE", "Germany"),
        ("FR", "France"),
        ("GB", "United Kingdom"),
        ("HK", "Hong Kong"),
        ("IL", "Israel"),
        ("IN", "India"),
        ("IT", "Italy"),
        ("JP", "Japan"),
        ("LS", "Lesotho"),
        ("NA", "Namibia"),
        ("NL", "Netherlands"),
        ("RU", "Russia"),
        ("SG", "Singapore"),
        ("SL", "Sierra Leone"),
        ("TH", "Thailand"),
        ("TZ", "Tanzania"),
        ("US", "United States"),
        ("ZA", "South Africa"),
        ("ZW", "Zimbabwe"),
    ];
    match NAMES.iter().find(|(c, _)| *c == code) {
        Some((_, name)) => format!("{name} ({code})"),
        None => code.to_owned(),
    }
}

/// Text as the standard fonts' WinAnsi encoding holds it: printable ASCII,
/// a few signs spelled out, anything else `?`.
fn ansi(text: &str) -> Vec<u8> {
    text.chars()
        .flat_map(|c| match c {
            ' '..='~' => vec![c as u8],
            '→' => b"->".to_vec(),
            '≥' => b">=".to_vec(),
            '✓' => b"yes".to_vec(),
            '✗' => b"no".to_vec(),
            '…' => b"...".to_vec(),
            '–' | '—' => b"-".to_vec(),
            _ => vec![b'?'],
        })
        .collect()
}

/// Lays `lines` out on as many A4 pages as they need, the QR code of
/// `qr` in the row that asks for it.
fn render(lines: &[Line], qr: &str) -> Vec<u8> {
    let mut pages: Vec<Vec<&Line>> = vec![Vec::new()];
    let mut y = HEIGHT - MARGIN;
    for l in lines {
        let step = l.height();
        if y - step < MARGIN {
            pages.push(Vec::new());
            y = HEIGHT - MARGIN;
        }
        y -= step;
        if let Some(page) = pages.last_mut() {
            page.push(l);
        }
    }
    let mut pdf = Pdf::new();
    let (catalog, tree, regular, bold) = (Ref::new(1), Ref::new(2), Ref::new(3), Ref::new(4));
    let page_ids: Vec<Ref> = (0..pages.len()).map(|i| Ref::new(5 + 2 * i as i32)).collect();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids(page_ids.iter().copied()).count(pages.len() as i32);
    pdf.type1_font(regular).base_font(Name(b"Helvetica")).encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold).base_font(Name(b"Helvetica-Bold")).encoding_predefined(Name(b"WinAnsiEncoding"));
    for (i, page_lines) in pages.iter().enumerate() {
        let (id, content_id) = (page_ids[i], Ref::new(6 + 2 * i as i32));
        let mut page = pdf.page(id);
        page.media_box(Rect::new(0.0, 0.0, WIDTH, HEIGHT));
        page.parent(tree);
        page.contents(content_id);
        page.resources().fonts().pair(Name(b"F1"), regular).pair(Name(b"F2"), bold);
        page.finish();
        let mut content = Content::new();
        let mut y = HEIGHT - MARGIN;
        for l in page_lines {
            y -= l.height();
            // The code at the left of its row, its caption beside it.
            let x = if l.qr {
                draw_qr(&mut content, qr, MARGIN, y + 4.0);
                MARGIN + QR_SIDE + 12.0
            } else {
                MARGIN
            };
            let baseline = if l.qr { y + QR_SIDE / 2.0 } else { y };
            content.begin_text();
            content.set_font(Name(if l.bold { b"F2" } else { b"F1" }), l.size);
            content.next_line(x, baseline);
            content.show(Str(&ansi(&l.text)));
            content.end_text();
        }
        pdf.stream(content_id, &content.finish());
    }
    pdf.finish()
}

/// The QR code of `text`, its quiet zone included, with its lower left
/// corner at (`left`, `bottom`).
fn draw_qr(content: &mut Content, text: &str, left: f32, bottom: f32) {
    let Some((n, dark)) = qr_modules(text) else { return };
    let module = QR_SIDE / (n + 8) as f32;
    let top = bottom + QR_SIDE;
    content.set_fill_gray(0.0);
    for (i, is_dark) in dark.iter().enumerate() {
        if *is_dark {
            let (x, y) = ((i % n + 4) as f32, (i / n + 4) as f32);
            content.rect(left + x * module, top - (y + 1.0) * module, module, module);
        }
    }
    content.fill_nonzero();
}

/// The QR code of `text`: its width in modules, and each module dark or
/// not, row by row.
fn qr_modules(text: &str) -> Option<(usize, Vec<bool>)> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some((code.width(), code.to_colors().iter().map(|c| *c == qrcode::Color::Dark).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_report_is_a_pdf_with_the_answer_and_a_qr_code_that_reads_back() {
        let origin = json!({"lot": "S1", "carats": "0.72", "state": "polished", "as_of_seq": 18, "traced": true,
            "mine_origin": [{"country": "BW", "share": "0.6000"}, {"country": "RU", "share": "0.4000"}],
            "customs_origin": "IN", "kp_origin": "mixed", "custody_model": "mass_balance",
            "path": [{"date": "2024-10-10", "country": "IN", "note": "cutting_polishing of L4 in IN → S1", "seq": 16, "vouched": {"by": "declared"}}]});
        let us = json!({"verdict": "prohibited", "reasons": [{"finding": "prohibited", "text": "mined wholly or in part in RU (0.4000 of its mass)"}]});
        let url = "http://127.0.0.1:8080/?lot=S1&date=2024-11-15";
        let bytes = pdf(&Report {
            origin: &origin,
            verdicts: vec![("United States (us-2024)".into(), &us)],
            date: "2024-11-15",
            check_url: url,
            made_at: "2026-12-02T10:00:00Z",
        });
        assert!(bytes.starts_with(b"%PDF-"));
        let text = String::from_utf8_lossy(&bytes);
        for said in ["(Origin report: S1)", "Russia (RU): 40.00 % of its weight", "India (IN)", "United States (us-2024): No (prohibited)", "L4 in IN -> S1"] {
            assert!(text.contains(said), "{said} in the report");
        }
        // The code drawn is the one for the page's URL: decoded back.
        let (n, dark) = qr_modules(url).unwrap();
        let mut img = rqrr::PreparedImage::prepare_from_greyscale((n + 8) * 4, (n + 8) * 4, |x, y| {
            let (mx, my) = ((x / 4).checked_sub(4), (y / 4).checked_sub(4));
            match (mx, my) {
                (Some(mx), Some(my)) if mx < n && my < n && dark[my * n + mx] => 0,
                _ => 255,
            }
        });
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1);
        assert_eq!(grids[0].decode().unwrap().1, url);
    }
}
