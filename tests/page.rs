//! The regulators' page in a real headless Chromium: look up S1 of the worked
//! example and see its shares, verdicts and drawn genealogy. The screenshot
//! is kept in target/test-artifacts/page.png.

mod common;

use std::process::Command;

use common::*;

/// The browser; if it is missing, the test says what to set up instead of
/// failing on a spawn error.
fn chromium() -> String {
    let chromium = std::env::var("CUSTODY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let ready = Command::new(&chromium).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ready, "the page test needs a headless Chromium at {chromium}: run deploy/chromium.sh (Debian's chromium package), or set CUSTODY_CHROMIUM");
    chromium
}

/// Headless Chromium with the flags this closed network needs; waits for the
/// page's own requests (virtual time) before dumping or shooting.
fn browse(profile: &std::path::Path, args: &[&str], url: &str) -> std::process::Output {
    let mut cmd = Command::new(chromium());
    custody::natsd::die_with_parent(&mut cmd);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=10000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .output()
    .expect("chromium runs: run deploy/chromium.sh or deploy/test.sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_s1_of_the_worked_example() {
    let mut sys = worked_example().await;
    let base = sys.start_gateway();

    let url = format!("{base}/?lot=S1&date=2024-11-15");
    let profile = sys.dir.path().join("chromium");
    let out = tokio::task::spawn_blocking({
        let (profile, url) = (profile.clone(), url.clone());
        move || browse(&profile, &["--dump-dom"], &url)
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dom.contains(r#"id="shares""#), "the page rendered its answer: {}", &dom[..dom.len().min(2000)]);

    let bar = |country: &str| {
        let at = dom.find(&format!(r#"data-country="{country}""#)).unwrap_or_else(|| panic!("a bar for {country}"));
        let rest = &dom[at..];
        let share = rest.split(r#"class="share">"#).nth(1).unwrap();
        share[..share.find('<').unwrap()].to_owned()
    };
    assert_eq!(bar("BW"), "0.6000");
    assert_eq!(bar("RU"), "0.4000");
    assert!(dom.contains(r#"<dd id="customs">IN</dd>"#));
    assert!(dom.contains(r#"<dd id="kp">mixed</dd>"#));
    let verdict = |rules: &str| {
        let at = dom.find(&format!(r#"data-rules="{rules}""#)).unwrap_or_else(|| panic!("a row for {rules}"));
        let rest = &dom[at..];
        let v = rest.split("class=\"verdict ").nth(1).unwrap();
        v[..v.find('"').unwrap()].to_owned()
    };
    assert_eq!(verdict("us-2022"), "admissible");
    assert_eq!(verdict("us-2024"), "prohibited");
    assert_eq!(verdict("eu-2024"), "prohibited");
    for lot in ["L1", "L2", "L3", "L4", "S1"] {
        assert!(dom.contains(&format!(r#"data-lot="{lot}""#)), "the graph draws {lot}");
    }
    assert!(dom.contains(r#"href="/v1/ledger/entries/16""#), "nodes and steps link to their ledger entries");

    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("page.png");
    let _ = std::fs::remove_file(&shot);
    let shot_arg = format!("--screenshot={}", shot.display());
    let out = tokio::task::spawn_blocking(move || browse(&profile, &[&shot_arg, "--window-size=1400,1100", "--hide-scrollbars"], &url)).await.unwrap();
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20_000, "a screenshot was taken ({size} bytes): {}", String::from_utf8_lossy(&out.stderr));
}
