//! The genealogy drawn as SVG on the server: mines at the top, stones at the
//! bottom, one layer per generation, each edge labelled with the event that
//! made the child and its carats, each node a link to its ledger entry. A
//! layered drawing is all a custody DAG needs, so it is written here rather
//! than pulled in from a general graph-layout crate.

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

/// Most nodes drawn per generation; the rest are counted, not drawn.
const MAX_PER_LAYER: usize = 24;
const NODE_W: i64 = 150;
const NODE_H: i64 = 46;
const GAP_X: i64 = 24;
const LAYER_H: i64 = 110;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Draws a genealogy answer (`node`, `ancestors`, `descendants`).
pub fn genealogy(g: &Value) -> String {
    let focus = g["lot"].as_str().unwrap_or_default().to_owned();
    let mut nodes: BTreeMap<String, &Value> = BTreeMap::new();
    for n in std::iter::once(&g["node"]).chain(g["ancestors"].as_array().into_iter().flatten()).chain(g["descendants"].as_array().into_iter().flatten()) {
        if let Some(id) = n["lot"].as_str() {
            nodes.insert(id.to_owned(), n);
        }
    }
    let parents = |id: &str| -> Vec<String> {
        nodes
            .get(id)
            .and_then(|n| n["parents"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .filter(|p| nodes.contains_key(p))
            .collect()
    };
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in nodes.keys() {
        for p in parents(id) {
            children.entry(p).or_default().push(id.clone());
        }
    }
    // Generation of each node relative to the focus: ancestors above, descendants below.
    let mut layer: BTreeMap<String, i64> = BTreeMap::from([(focus.clone(), 0)]);
    let mut queue = VecDeque::from([focus.clone()]);
    while let Some(id) = queue.pop_front() {
        let here = layer[&id];
        if here <= 0 {
            for p in parents(&id) {
                if !layer.contains_key(&p) {
                    layer.insert(p.clone(), here - 1);
                    queue.push_back(p);
                }
            }
        }
        if here >= 0 {
            for c in children.get(&id).cloned().unwrap_or_default() {
                if !layer.contains_key(&c) {
                    layer.insert(c.clone(), here + 1);
                    queue.push_back(c);
                }
            }
        }
    }
    let mut layers: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (id, l) in &layer {
        layers.entry(*l).or_default().push(id.clone());
    }
    let top = layers.keys().next().copied().unwrap_or(0);
    let widest = layers.values().map(|v| v.len().min(MAX_PER_LAYER + 1)).max().unwrap_or(1) as i64;
    let width = widest * (NODE_W + GAP_X) + GAP_X;
    let height = layers.len() as i64 * LAYER_H + 20;
    let mut pos: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut hidden: BTreeMap<i64, usize> = BTreeMap::new();
    for (l, ids) in &layers {
        let shown = ids.len().min(MAX_PER_LAYER);
        let slots = shown as i64 + i64::from(ids.len() > MAX_PER_LAYER);
        let x0 = (width - slots * (NODE_W + GAP_X) + GAP_X) / 2;
        for (i, id) in ids.iter().take(shown).enumerate() {
            pos.insert(id.clone(), (x0 + i as i64 * (NODE_W + GAP_X), (l - top) * LAYER_H + 20));
        }
        if ids.len() > shown {
            hidden.insert(*l, ids.len() - shown);
        }
    }
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-labelledby="gtitle" font-family="system-ui, sans-serif" font-size="12">
<title id="gtitle">Genealogy of {}: mines at the top, stones at the bottom</title>
<style>.node rect{{fill:#f4f6f8;stroke:#445;}} .node.focus rect{{fill:#fff3c4;stroke:#a60;stroke-width:2}} .node a:focus rect{{stroke:#06c;stroke-width:3}} .edge{{stroke:#889;}} .label{{fill:#556;font-size:10px}}</style>
"#,
        esc(&focus)
    );
    for (id, (x, y)) in &pos {
        for p in parents(id) {
            let Some((px, py)) = pos.get(&p) else { continue };
            let (x1, y1, x2, y2) = (px + NODE_W / 2, py + NODE_H, x + NODE_W / 2, *y);
            let n = nodes[id];
            // What flows along this edge: a merge takes all of each input;
            // a split or a cut yields the child's mass.
            let event = n["event"].as_str().unwrap_or("");
            let carats = if event == "merged" { nodes[&p]["carats"].as_str() } else { n["carats"].as_str() };
            let label = format!("{event} {} ct", carats.unwrap_or(""));
            // Nearer the parent, so that labels of converging edges stay apart.
            let (lx, ly) = (x1 + (x2 - x1) * 35 / 100, y1 + (y2 - y1) * 35 / 100 + 4);
            out.push_str(&format!(r#"<g class="edge-group"><line class="edge" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}"/><text class="label" x="{lx}" y="{ly}" text-anchor="middle">{}</text></g>
"#, esc(&label)));
        }
    }
    for (id, (x, y)) in &pos {
        let n = nodes[id];
        let class = if *id == focus { "node focus" } else { "node" };
        let seq = n["seq"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            r#"<g class="{class}" data-lot="{lot}"><a href="/v1/ledger/entries/{seq}" aria-label="{lot}, {carats} ct, {event} at seq {seq}"><rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/><text x="{tx}" y="{ty1}" text-anchor="middle" font-weight="bold">{lot}</text><text x="{tx}" y="{ty2}" text-anchor="middle">{carats} ct · {event} · {country}</text></a></g>
"#,
            lot = esc(id),
            carats = esc(n["carats"].as_str().unwrap_or("")),
            event = esc(n["event"].as_str().unwrap_or("")),
            country = esc(n["country"].as_str().unwrap_or("")),
            tx = x + NODE_W / 2,
            ty1 = y + 19,
            ty2 = y + 36,
        ));
    }
    for (l, count) in hidden {
        let y = (l - top) * LAYER_H + 20 + NODE_H / 2;
        out.push_str(&format!(
            r#"<text x="{}" y="{y}" text-anchor="end">+{count} more not drawn</text>
"#,
            width - 8
        ));
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mines_above_stones_below_and_text_escaped() {
        let n = |lot: &str, parents: &[&str], event: &str| json!({"lot": lot, "carats": "1.00", "event": event, "seq": 1, "country": "BW", "parents": parents});
        let g = json!({"lot": "M", "node": n("M", &["A", "B<x>"], "merged"), "ancestors": [n("A", &[], "mined"), n("B<x>", &[], "mined")], "descendants": [n("S", &["M"], "processed")]});
        let svg = genealogy(&g);
        let y_of = |lot: &str| {
            let at = svg.find(&format!("data-lot=\"{lot}\"")).unwrap();
            let rest = &svg[at..];
            let y = rest.split("y=\"").nth(1).unwrap();
            y[..y.find('"').unwrap()].parse::<i64>().unwrap()
        };
        assert!(y_of("A") < y_of("M") && y_of("M") < y_of("S"));
        assert!(svg.contains("B&lt;x&gt;") && !svg.contains("B<x>"));
        assert!(svg.contains("processed 1.00 ct"));
        assert!(svg.contains("merged 1.00 ct"), "a merge edge carries its input's mass");
    }
}
