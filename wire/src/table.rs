//! Any list custody answers with, as CSV: the one way the gateway and the
//! command line turn JSON rows into a table (lots, flows, filings).

use serde_json::Value;

/// `rows` (JSON objects) as CSV, header first. Each row's fields are
/// flattened to dotted columns (`vouched.by`); a list is one JSON cell.
/// Then `shared`'s fields, flattened the same way, are repeated on every
/// row (what the whole answer says: its checkpoint, its verdict, ...); a
/// shared field named like a row's column is `<clash>_<name>`. Columns
/// are the union over the rows: `lead` first, in its order, then the rest
/// in the order first seen (a JSON object's fields in name order); a row
/// without one leaves it empty. Quoting follows RFC 4180 (the `csv` crate).
pub fn csv(rows: &[Value], lead: &[&str], shared: &Value, clash: &str) -> String {
    let rows: Vec<Vec<(String, Value)>> = rows.iter().map(|r| flat(r, "")).collect();
    let mut columns: Vec<String> = lead.iter().map(|c| (*c).to_owned()).collect();
    for row in &rows {
        for (k, _) in row {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let shared: Vec<(String, Value)> = flat(shared, "").into_iter().map(|(k, v)| (if columns.contains(&k) { format!("{clash}_{k}") } else { k }, v)).collect();
    let mut out = ::csv::Writer::from_writer(Vec::new());
    let header = columns.iter().map(String::as_str).chain(shared.iter().map(|(k, _)| k.as_str()));
    // Writing to memory fails on nothing but a broken invariant of the
    // crate; an empty table then is better than a panic.
    let _ = out.write_record(header);
    for row in &rows {
        let cells = columns.iter().map(|c| row.iter().find(|(k, _)| k == c).map_or_else(String::new, |(_, v)| cell(v)));
        let _ = out.write_record(cells.chain(shared.iter().map(|(_, v)| cell(v))));
    }
    String::from_utf8(out.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// A value as one cell: text as is, null empty, anything else as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// An object's fields as dotted columns; anything else is one column.
fn flat(value: &Value, prefix: &str) -> Vec<(String, Value)> {
    match value.as_object() {
        Some(fields) => fields
            .iter()
            .flat_map(|(k, v)| {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flat(v, &name)
            })
            .collect(),
        None if prefix.is_empty() => Vec::new(),
        None => vec![(prefix.to_owned(), value.clone())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_are_flattened_and_the_shared_fields_repeated() {
        let rows = [
            json!({"lot": "S1", "carats": "0.72", "mine_origin": [{"country": "RU"}], "vouched": {"by": "declared"}}),
            json!({"lot": "S,3", "verdict": "admissible"}),
        ];
        let text = csv(&rows, &["lot"], &json!({"as_of_seq": 933, "lot": "L4", "next": null}), "list");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "lot,carats,mine_origin,vouched.by,verdict,as_of_seq,list_lot,next");
        assert_eq!(lines[1], r#"S1,0.72,"[{""country"":""RU""}]",declared,,933,L4,"#);
        assert_eq!(lines[2], r#""S,3",,,,admissible,933,L4,"#);
        assert_eq!(lines.len(), 3);
    }
}
