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

/// What the phone check measures, once the page has answered: the
/// viewport's width, the right edge of the widest box (sections and
/// paragraphs), and the narrowest reason.
const PHONE_LAYOUT: &str = r##"(() => {
  if (!document.getElementById("plain")) return null;
  const right = [...document.querySelectorAll("#result section, #result p")].map(e => e.getBoundingClientRect().right);
  const reasons = [...document.querySelectorAll("li[data-finding]")].map(e => e.getBoundingClientRect().width);
  const box = document.getElementById("graph"), stone = box.querySelector(`[data-lot="${document.getElementById("lot").value}"]`).getBoundingClientRect();
  const shown = box.getBoundingClientRect();
  return JSON.stringify({ width: window.innerWidth, widest: Math.max(...right), narrowest_reason: Math.min(...reasons),
    graph_scrolls: box.scrollWidth > box.clientWidth, stone_off_centre: Math.abs(stone.left + stone.width / 2 - (shown.left + shown.width / 2)) });
})()"##;

/// Opens `url` in headless Chromium emulating a phone 390 CSS pixels wide
/// (DevTools' device metrics, over `--remote-debugging-pipe`: a headless
/// window is never narrower than 500 px), waits until `expression`
/// evaluates to a JSON text, saves a screenshot at `shot`, and returns
/// what it evaluated to.
fn on_a_phone(profile: &std::path::Path, url: &str, expression: &str, shot: &std::path::Path) -> serde_json::Value {
    in_chromium(profile, url, expression, shot, None)
}

/// [`on_a_phone`], with the CSS media emulated (`print`, say).
fn in_chromium(profile: &std::path::Path, url: &str, expression: &str, shot: &std::path::Path, media: Option<&str>) -> serde_json::Value {
    let mut tab = Tab::open(profile, media);
    tab.go(url);
    let measured = tab.until(expression);
    tab.screenshot(shot);
    measured
}

/// One headless Chromium tab at a phone's width, driven over DevTools'
/// pipe; the browser is closed and reaped on drop.
struct Tab {
    child: std::process::Child,
    commands: std::fs::File,
    answers: std::io::Split<std::io::BufReader<std::fs::File>>,
    next: u64,
    session: String,
}

impl Tab {
    fn open(profile: &std::path::Path, media: Option<&str>) -> Tab {
        use std::io::BufRead as _;
        use std::os::unix::io::FromRawFd as _;
        use std::os::unix::process::CommandExt as _;
        let pipe = || {
            let mut fds = [0; 2];
            // SAFETY: pipe(2) writes two descriptors into the array we own.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            fds
        };
        let (to_chromium, from_chromium) = (pipe(), pipe());
        let mut cmd = Command::new(chromium());
        custody::natsd::die_with_parent(&mut cmd);
        let (their_read, their_write) = (to_chromium[0], from_chromium[1]);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Chromium reads commands on descriptor 3 and writes on 4.
                let (r, w) = (libc::fcntl(their_read, libc::F_DUPFD, 10), libc::fcntl(their_write, libc::F_DUPFD, 10));
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--remote-debugging-pipe"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromium runs");
        // SAFETY: each descriptor is ours alone from here on, and closed once.
        let (commands, answers) = unsafe {
            libc::close(their_read);
            libc::close(their_write);
            (std::fs::File::from_raw_fd(to_chromium[1]), std::io::BufReader::new(std::fs::File::from_raw_fd(from_chromium[0])))
        };
        let mut tab = Tab { child, commands, answers: answers.split(0), next: 0, session: String::new() };
        let target = tab.browser("Target.createTarget", serde_json::json!({"url": "about:blank"}))["targetId"].as_str().unwrap().to_owned();
        tab.session = tab.browser("Target.attachToTarget", serde_json::json!({"targetId": target, "flatten": true}))["sessionId"].as_str().unwrap().to_owned();
        tab.call("Emulation.setDeviceMetricsOverride", serde_json::json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}));
        if let Some(media) = media {
            tab.call("Emulation.setEmulatedMedia", serde_json::json!({"media": media}));
        }
        tab
    }

    fn send(&mut self, method: &str, params: serde_json::Value, in_tab: bool) -> serde_json::Value {
        let answer = self.exchange(method, params, in_tab);
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Sends one command and returns its whole answer, error or result.
    fn exchange(&mut self, method: &str, params: serde_json::Value, in_tab: bool) -> serde_json::Value {
        use std::io::Write as _;
        self.next += 1;
        let mut message = serde_json::json!({"id": self.next, "method": method, "params": params});
        if in_tab {
            message["sessionId"] = self.session.clone().into();
        }
        self.commands.write_all(format!("{message}\0").as_bytes()).unwrap();
        loop {
            let raw = self.answers.next().expect("chromium answers").unwrap();
            let answer: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            if answer["id"] == self.next {
                return answer;
            }
        }
    }

    /// A DevTools command to the browser.
    fn browser(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.send(method, params, false)
    }

    /// A DevTools command to the tab.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.send(method, params, true)
    }

    fn go(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({"url": url}));
    }

    /// Evaluates `expression` until it gives a JSON text (20 s at most).
    fn until(&mut self, expression: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            // While the page navigates, there is nothing to evaluate in: again.
            let v = self.exchange("Runtime.evaluate", serde_json::json!({"expression": expression, "returnByValue": true}), true);
            if let Some(text) = v["result"]["result"]["value"].as_str() {
                return serde_json::from_str(text).unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "the page did not answer within 20 s: {expression}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Chooses `file` in the file input `selector`, as a person would.
    /// A page that re-renders between the steps (its document replaced,
    /// so the node ids asked for are gone) is asked again, as a person
    /// would click again.
    fn choose(&mut self, selector: &str, file: &std::path::Path) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let root = self.call("DOM.getDocument", serde_json::json!({}))["root"]["nodeId"].clone();
            let found = self.exchange("DOM.querySelector", serde_json::json!({"nodeId": root, "selector": selector}), true);
            let chosen = match found["result"]["nodeId"].as_i64().filter(|n| *n != 0) {
                Some(node) => self.exchange("DOM.setFileInputFiles", serde_json::json!({"nodeId": node, "files": [file.to_str().unwrap()]}), true),
                None => found,
            };
            if chosen.get("error").is_none() {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "cannot choose a file in {selector}: {chosen}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, shot: &std::path::Path) {
        let png = self.call("Page.captureScreenshot", serde_json::json!({"format": "png", "captureBeyondViewport": true}));
        let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, png["data"].as_str().unwrap()).unwrap();
        if let Some(dir) = shot.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(shot, png).unwrap();
    }
}

impl Drop for Tab {
    fn drop(&mut self) {
        use std::io::Write as _;
        self.next += 1;
        let _ = self.commands.write_all(format!("{}\0", serde_json::json!({"id": self.next, "method": "Browser.close", "params": {}})).as_bytes());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    // One plain line first, for the market picked (the United States by
    // default, under its newest rule set), with the reason that decides.
    let plain = dom.split(r#"<p id="plain""#).nth(1).map(|p| p[..p.find("</p>").unwrap()].to_owned()).expect("a plain verdict line");
    assert!(plain.contains(r#"data-verdict="prohibited""#) && plain.contains(r#"data-market-rules="us-2024""#), "{plain}");
    assert!(plain.contains("May S1 enter the United States on 2024-11-15? <strong>No:</strong>"), "{plain}");
    assert!(plain.contains("RU") && plain.contains("mined wholly or in part in Russia"), "the deciding reason and the rule set's title: {plain}");
    eprintln!("plain line: {plain}");
    // Each reason marked: failed, passed.
    assert!(
        dom.contains(r#"<li data-finding="prohibited" title="this rule stops it"><span class="mark" aria-label="this rule stops it">✗</span>"#),
        "a failed reason is marked"
    );
    assert!(
        dom.contains(r#"<li data-finding="admissible" title="this rule does not stop it"><span class="mark" aria-label="this rule does not stop it">✓</span>"#),
        "a passed reason is marked"
    );
    // Each reason cites the text its rule encodes.
    assert!(dom.contains(r#"<small class="cites"> (OFAC determination of 2024-03-08"#), "reasons cite their law");
    // Countries by name, with their codes.
    assert!(dom.contains("<strong>Russia (RU)</strong>") && dom.contains("<strong>Botswana (BW)</strong>"), "country names");
    // Every term the page uses, explained.
    for term in ["<dt>Custody model</dt>", "<dt>Late record</dt>", "<dt>Entry, seq</dt>", "<dt>KP origin</dt>", "<dt>Declared, evidenced, verified</dt>"] {
        assert!(dom.contains(term), "the glossary explains {term}");
    }
    for lot in ["L1", "L2", "L3", "L4", "S1"] {
        assert!(dom.contains(&format!(r#"data-lot="{lot}""#)), "the graph draws {lot}");
    }
    assert!(dom.contains(r#"href="/v1/ledger/entries/16""#), "nodes and steps link to their ledger entries");
    // The journey, one step a line: when, where, who, what, vouched by whom.
    let timeline = dom.split(r#"<ol id="timeline">"#).nth(1).map(|t| t[..t.find("</ol>").unwrap()].to_owned()).expect("a journey timeline");
    let steps: Vec<&str> = timeline.split("<li ").skip(1).collect();
    assert!(steps.len() >= 8, "every step of S1's journey: {timeline}");
    let mined = steps.iter().find(|s| s.contains(r#"data-kind="mined""#) && s.contains("Russia (RU)")).expect("the Russian mine");
    assert!(mined.contains(r#"<time datetime="2024-09-02">2024-09-02</time>"#) && mined.contains(r#"<span class="who">the miner</span>"#), "{mined}");
    let merged = steps.iter().find(|s| s.contains(r#"data-kind="merged""#)).expect("the merge");
    assert!(merged.contains(r#"data-lot="L3""#), "a step is labelled with the lot it made or acted on: {merged}");
    let cut = steps.iter().find(|s| s.contains(r#"data-kind="processed""#)).expect("the cut");
    assert!(cut.contains("India (IN)") && cut.contains("the cutting centre") && cut.contains(r#"data-vouched="declared""#), "{cut}");
    assert!(cut.contains("late record"), "the test's entries are recorded years after their dates: {cut}");
    assert!(dom.contains(r#"href="/v1/lots/S1/origin?format=csv""#), "the journey as CSV");
    let csv = reqwest::get(format!("{base}/v1/lots/S1/origin?format=csv")).await.unwrap().text().await.unwrap();
    assert!(csv.starts_with("seq,date,kind,country,note,late_record,vouched.by,"), "{csv}");
    assert_eq!(csv.lines().count(), 8, "one row a step of S1's own path (from L3's merge): {csv}");
    assert!(steps.len() >= 13, "the journey adds L1's and L2's mining, export and import: {timeline}");
    let dates: Vec<&str> = steps.iter().filter_map(|s| s.split(r#"<time datetime=""#).nth(1)).map(|d| &d[..10]).collect();
    assert!(dates.windows(2).all(|w| w[0] <= w[1]), "oldest first: {dates:?}");

    // Another market, picked in the link: the European Union's newest set.
    let eu = tokio::task::spawn_blocking({
        let (profile, url) = (profile.clone(), format!("{base}/?lot=S1&date=2024-11-15&market=eu"));
        move || String::from_utf8_lossy(&browse(&profile, &["--dump-dom"], &url).stdout).into_owned()
    })
    .await
    .unwrap();
    // On 2024-11-15 the EU's 2024 set is in force (its 2025 one, for
    // mixed rough, from 2025-03-01); a date after that, the 2025 one.
    assert!(eu.contains(r#"data-market-rules="eu-2024""#) && eu.contains("May S1 enter the European Union on 2024-11-15?"), "the EU line");
    let later = tokio::task::spawn_blocking({
        let (profile, url) = (profile.clone(), format!("{base}/?lot=S1&date=2025-06-02&market=eu"));
        move || String::from_utf8_lossy(&browse(&profile, &["--dump-dom"], &url).stdout).into_owned()
    })
    .await
    .unwrap();
    assert!(later.contains(r#"data-market-rules="eu-2025""#), "the set in force on the date");
    assert!(dom.contains(r#"href="/v1/lots/S1/report.pdf?date=2024-11-15""#), "the origin report is offered");

    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("page.png");
    let _ = std::fs::remove_file(&shot);
    let shot_arg = format!("--screenshot={}", shot.display());
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || browse(&profile, &[&shot_arg, "--window-size=1400,1100", "--hide-scrollbars"], &url)
    })
    .await
    .unwrap();
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20_000, "a screenshot was taken ({size} bytes): {}", String::from_utf8_lossy(&out.stderr));

    // On a phone (390 CSS pixels wide, emulated as DevTools does): one
    // column; nothing but the genealogy drawing, in its own box, is wider
    // than the screen; a reason is never squeezed to a word a line.
    let profile = sys.dir.path().join("chromium-phone");
    let phone = tokio::task::spawn_blocking(move || on_a_phone(&profile, &url, PHONE_LAYOUT, &artifacts.join("page-390.png"))).await.unwrap();
    eprintln!("at 390 px: {phone}");
    assert_eq!(phone["width"], 390, "{phone}");
    assert!(phone["widest"].as_f64().unwrap() <= 391.0, "something is wider than the phone: {phone}");
    assert!(phone["narrowest_reason"].as_f64().unwrap() >= 250.0, "a reason squeezed narrow: {phone}");
    // "Download the origin certificate", clicked by someone not signed
    // in as a regulator: told plainly who may have one, and how.
    let click = r##"(() => {
      const a = document.getElementById("certificate");
      if (!a) return null;
      if (!window.clicked) { window.clicked = true; a.click(); return null; }
      const n = document.querySelector("#certificate-note [data-code]");
      return n ? JSON.stringify({ code: n.dataset.code, text: n.textContent }) : null;
    })()"##;
    let (profile, page) = (sys.dir.path().join("chromium-click"), format!("{base}/?lot=S1&date=2024-11-15"));
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/refused.png");
    let refused = tokio::task::spawn_blocking(move || on_a_phone(&profile, &page, click, &shot)).await.unwrap();
    assert_eq!(refused["code"], "bad_credentials", "{refused}");
    assert!(refused["text"].as_str().unwrap_or("").contains("given only to a customs or regulatory authority"), "{refused}");

    // The genealogy, wider than the phone, opens centred on the stone.
    assert_eq!(phone["graph_scrolls"], true, "{phone}");
    assert!(phone["stone_off_centre"].as_f64().unwrap() < 5.0, "the stone is in the middle of the drawing's box: {phone}");

    // Zoom: the whole family fits the phone's box; larger again on asking.
    let zoom = r##"(() => {
      const svg = document.querySelector("#graph svg"), box = document.getElementById("graph");
      if (!svg || !document.getElementById("zoom-fit")) return null;
      if (!window.z) { window.z = 1; window.natural = svg.getBoundingClientRect().width; document.getElementById("zoom-fit").click(); return null; }
      if (window.z === 1) { window.z = 2; window.fit = svg.getBoundingClientRect().width; document.getElementById("zoom-in").click(); return null; }
      return JSON.stringify({ natural: window.natural, fit: window.fit, box: box.clientWidth, larger: svg.getBoundingClientRect().width });
    })()"##;
    let (profile, page) = (sys.dir.path().join("chromium-zoom"), format!("{base}/?lot=S1&date=2024-11-15"));
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/zoomed.png");
    let z = tokio::task::spawn_blocking(move || on_a_phone(&profile, &page, zoom, &shot)).await.unwrap();
    let (natural, fit, box_width, larger) =
        (z["natural"].as_f64().unwrap(), z["fit"].as_f64().unwrap(), z["box"].as_f64().unwrap(), z["larger"].as_f64().unwrap());
    assert!(natural > box_width && fit <= box_width && larger > fit * 1.4, "zoomed: {z}");

    // On paper: the answer alone, in one column, the glossary with it.
    let printed = r##"(() => {
      if (!document.getElementById("timeline")) return null;
      window.dispatchEvent(new Event("beforeprint"));
      const shown = id => { const e = document.getElementById(id); return !!e && getComputedStyle(e).display !== "none"; };
      const grid = document.querySelector(".grid");
      return JSON.stringify({ form: shown("lookup"), signin: shown("signin"), drop: shown("drop"), plain: shown("plain"),
        timeline: shown("timeline"), glossary_open: document.getElementById("glossary").open,
        columns: getComputedStyle(grid).gridTemplateColumns.split(" ").length });
    })()"##;
    let (profile, page) = (sys.dir.path().join("chromium-print"), format!("{base}/?lot=S1&date=2024-11-15"));
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/print.png");
    let paper = tokio::task::spawn_blocking(move || in_chromium(&profile, &page, printed, &shot, Some("print"))).await.unwrap();
    assert_eq!(
        paper,
        serde_json::json!({"form": false, "signin": false, "drop": false, "plain": true, "timeline": true, "glossary_open": true, "columns": 1}),
        "printed: {paper}"
    );
}

/// An officer holding only the number on a paper finds the stone: the KP
/// certificate, typed in lower case, lists the rough it names and the
/// stones cut from it, each a link; a lot id typed goes straight to the
/// lot; a number nobody recorded says so plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_finds_a_stone_by_the_number_on_its_papers() {
    let mut sys = worked_example().await;
    let base = sys.start_gateway();
    let dom = |query: &str| {
        let (profile, url) = (sys.dir.path().join("chromium"), format!("{base}/?{query}"));
        tokio::task::spawn_blocking(move || String::from_utf8_lossy(&browse(&profile, &["--dump-dom"], &url).stdout).into_owned())
    };
    let found = dom("q=ae-2024-0042&date=2024-11-15").await.unwrap();
    assert!(found.contains(r#"id="found" data-count="1""#), "one lot found: {}", &found[..found.len().min(3000)]);
    assert!(found.contains(r#"data-found="L4""#) && found.contains("KP certificate (export)"), "{found}");
    for stone in ["S1", "S2", "S3"] {
        assert!(found.contains(&format!(r#"href="?lot={stone}&amp;date=2024-11-15" data-lot="{stone}""#)), "a link to {stone}: {found}");
    }
    let direct = dom("q=s1&date=2024-11-15").await.unwrap();
    assert!(direct.contains(r#"id="shares""#) && direct.contains("<title>custody: S1</title>"), "a lot id goes straight to the lot");
    let none = dom("q=XX-2024-0000&date=2024-11-15").await.unwrap();
    assert!(none.contains(r#"id="found" data-count="0""#) && none.contains("Check the number on the paper"), "{none}");
}

/// The public flows page, for anyone: a flow of enough exporters in plain
/// words (countries by name), the same figure the JSON gives; flows of a
/// single exporter never shown alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anyone_reads_the_public_flows_page() {
    let mut sys = worked_example().await;
    let trader = sys.actor("flows-trader", "trader", "AE").await;
    for i in 0..3 {
        let mine = sys.actor(&format!("flows-mine-{i}"), "miner", "BW").await;
        let mut mined = event(&mine, &format!("fl-m{i}"), "mined", serde_json::json!({"lot": format!("FL{i}"), "carats": "100.00", "country": "BW"}));
        mined["occurred_at"] = serde_json::json!("2024-07-01T08:00:00Z");
        sys.accept(&mine, &mined).await;
        let certificate = serde_json::json!({"number": format!("BW-2024-8{i:03}"), "value_usd": "10000.00"});
        let mut exported = event(
            &mine,
            &format!("fl-x{i}"),
            "exported",
            serde_json::json!({"lots": [format!("FL{i}")], "to": trader.public_key(), "to_country": "AE", "certificate": certificate}),
        );
        exported["occurred_at"] = serde_json::json!("2024-08-01T08:00:00Z");
        sys.accept(&mine, &exported).await;
    }
    sys.projection_caught_up().await;
    let base = sys.start_gateway();
    let stats: serde_json::Value = reqwest::get(format!("{base}/v1/statistics")).await.unwrap().json().await.unwrap();
    let bw =
        stats["flows"].as_array().unwrap().iter().find(|f| f["mined_in"] == "BW" && f["to"] == "AE").cloned().expect("the Botswanan flow to the UAE is shown");
    let csv = reqwest::get(format!("{base}/v1/statistics?format=csv")).await.unwrap().text().await.unwrap();
    assert!(csv.starts_with("mined_in,to,quarter,carats,stones,value_usd,as_of_seq\n"), "{csv}");
    assert!(csv.contains(&format!("BW,AE,{},{},", bw["quarter"].as_str().unwrap(), bw["carats"].as_str().unwrap())), "{csv}");

    let (profile, url) = (sys.dir.path().join("chromium"), format!("{base}/statistics"));
    let dom = tokio::task::spawn_blocking(move || String::from_utf8_lossy(&browse(&profile, &["--dump-dom"], &url).stdout).into_owned()).await.unwrap();
    let row = dom.split(r#"<tr data-mined-in="BW" data-to="AE">"#).nth(1).map(|r| r[..r.find("</tr>").unwrap()].to_owned()).expect("a row for BW to AE");
    assert!(row.contains("Botswana (BW)") && row.contains("United Arab Emirates (AE)"), "{row}");
    assert!(row.contains(&format!(">{}<", bw["carats"].as_str().unwrap())) && row.contains(&format!(">{}<", bw["value_usd"].as_str().unwrap())), "{row}");
    assert!(!dom.contains(r#"data-mined-in="RU" data-to="AE""#), "one Russian exporter is never shown alone");
    assert!(dom.contains("every figure from at least 3 exporters"), "the page says how thin a figure may be");
}

/// The officer's whole errand, on a phone: sign in with the key file
/// (the key stays in the browser: WebCrypto signs the gateway's
/// challenge; the session cookie is out of the page's scripts' reach),
/// find the stone by the KP certificate number on its papers, read the
/// one-line verdict for the United States today, download the
/// certificate and hand it back to the page, which checks it. A trader
/// signed in is told plainly why no certificate is offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regulator_signs_in_on_the_page_and_downloads_the_certificate() {
    let mut sys = worked_example().await;
    let regulator = sys.actor("page-customs", "regulator", "US").await;
    let trader = sys.actor("page-trader", "trader", "AE").await;
    sys.projection_caught_up().await;
    let base = sys.start_gateway();
    let key_file = |name: &str, key: &nkeys::KeyPair| {
        let file = sys.dir.path().join(format!("{name}.nk"));
        std::fs::write(&file, key.seed().unwrap()).unwrap();
        file
    };
    let (regulator_key, trader_key) = (key_file("customs", &regulator), key_file("trader", &trader));
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    let downloads = sys.dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let signed_in = r##"(() => { const st = document.getElementById("signin-state");
        if (!st) return null; const e = st.querySelector(".error"); if (e) return JSON.stringify({ error: e.textContent });
        return st.dataset.signedIn ? JSON.stringify({ as: st.dataset.signedIn, cookie_visible: document.cookie.includes("custody_session") }) : null; })()"##;
    let note = r##"(() => { const n = document.querySelector("#certificate-note [data-code]");
        return n ? JSON.stringify({ code: n.dataset.code, text: n.textContent }) : null; })()"##;

    // A customs officer at the border, on a phone: signs in with the key
    // file, finds the stone by the KP certificate number on its papers,
    // reads the verdict for the United States today, downloads the
    // certificate and hands it back to the page, which checks it.
    let (profile, home, today) = (sys.dir.path().join("chromium-officer"), format!("{base}/"), chrono::Utc::now().date_naive().to_string());
    let (regulator_key_file, downloaded_dir) = (regulator_key.clone(), downloads.clone());
    let shots = artifacts.clone();
    let officer = tokio::task::spawn_blocking(move || {
        let mut tab = Tab::open(&profile, None);
        tab.browser("Browser.setDownloadBehavior", serde_json::json!({"behavior": "allow", "downloadPath": downloaded_dir.to_str().unwrap()}));
        tab.go(&home);
        tab.until(r#"document.getElementById("seedfile") ? "{}" : null"#);
        tab.choose("#seedfile", &regulator_key_file);
        let who = tab.until(signed_in);
        tab.until(r#"(() => { const f = document.getElementById("lookup"); f.lot.value = "ae-2024-0042"; f.requestSubmit(); return "{}"; })()"#);
        let found = tab.until(r##"(() => { const l = document.getElementById("found"); return l ? JSON.stringify([...l.querySelectorAll("a[data-lot]")].map(a => a.dataset.lot)) : null; })()"##);
        tab.until(r##"(() => { document.querySelector('#found a[data-lot="S1"]').click(); return "{}"; })()"##);
        let plain = tab.until(r#"(() => { const p = document.getElementById("plain"); return p ? JSON.stringify({ verdict: p.dataset.verdict, rules: p.dataset.marketRules, text: p.textContent }) : null; })()"#);
        tab.screenshot(&shots.join("officer-verdict.png"));
        tab.until(r#"(() => { document.getElementById("certificate").click(); return "{}"; })()"#);
        let got = tab.until(note);
        let file = downloaded_dir.join("S1.certificate.json");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !file.exists() || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(std::time::Instant::now() < deadline, "the certificate was never saved");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        tab.until(r#"document.getElementById("ledgerkey").value ? "{}" : null"#);
        tab.choose("#certfile", &file);
        let checked = tab.until(r#"(() => { const r = document.getElementById("report"); const v = r && r.querySelector(".valid, .invalid");
            return v ? JSON.stringify({ valid: v.classList.contains("valid"), text: r.textContent }) : null; })()"#);
        tab.screenshot(&shots.join("officer-checked.png"));
        (who, found, plain, got, checked)
    })
    .await
    .unwrap();
    let (who, found, plain, got, checked) = officer;
    assert_eq!(who, serde_json::json!({"as": "regulator", "cookie_visible": false}), "signed in with the key file; the cookie is HttpOnly");
    assert!(
        found.as_array().unwrap().iter().any(|l| l == "L4") && found.as_array().unwrap().iter().any(|l| l == "S1"),
        "the KP number finds the rough and the stones cut from it: {found}"
    );
    assert_eq!((plain["verdict"].as_str(), plain["rules"].as_str()), (Some("prohibited"), Some("us-2024")), "{plain}");
    assert!(plain["text"].as_str().unwrap().starts_with(&format!("May S1 enter the United States on {today}? No:")), "{plain}");
    assert_eq!(got["code"], "downloaded", "{got}");
    assert_eq!(checked["valid"], true, "the certificate handed back checks out: {checked}");

    // A trader signed in is told plainly why no certificate is offered.
    let (profile, page) = (sys.dir.path().join("chromium-trader"), format!("{base}/?lot=S1"));
    let shot = artifacts.join("signed-in-trader.png");
    let trader = tokio::task::spawn_blocking(move || {
        let mut tab = Tab::open(&profile, None);
        tab.go(&page);
        tab.until(r#"document.getElementById("certificate") ? "{}" : null"#);
        tab.choose("#seedfile", &trader_key);
        let who = tab.until(signed_in);
        tab.until(r#"(() => { document.getElementById("certificate").click(); return "{}"; })()"#);
        let got = tab.until(note);
        tab.screenshot(&shot);
        (who, got)
    })
    .await
    .unwrap();
    assert_eq!(trader.0["as"], "actor", "{:?}", trader.0);
    assert_eq!(trader.1["code"], "not_permitted", "{:?}", trader.1);
    assert!(trader.1["text"].as_str().unwrap_or("").contains("given only to a customs or regulatory authority"), "{:?}", trader.1);

    // A key that is not one is told plainly.
    let typo = sys.dir.path().join("typo.nk");
    std::fs::write(&typo, "SUNOTASEED").unwrap();
    let (profile, page) = (sys.dir.path().join("chromium-typo"), format!("{base}/"));
    let got = tokio::task::spawn_blocking(move || {
        let mut tab = Tab::open(&profile, None);
        tab.go(&page);
        tab.until(r#"document.getElementById("seedfile") ? "{}" : null"#);
        tab.choose("#seedfile", &typo);
        tab.until(signed_in)
    })
    .await
    .unwrap();
    assert!(got["error"].as_str().is_some_and(|e| e.contains("not an nkey seed")), "a wrong key is told plainly: {got}");
}

/// A lot's page shows how each step is vouched for; the certificate it
/// links to, handed back to the page, checks out; a tampered one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_vouching_and_checks_a_certificate_handed_to_it() {
    use base64::Engine as _;
    let mut sys = worked_example().await;
    let node = nkeys::KeyPair::new_user();
    let a = &sys.authority;
    let reg = event(
        a,
        "reg-ado",
        "actor.registered",
        serde_json::json!({"subject": node.public_key(), "name": "Antwerp Diamond Office", "roles": ["verifier"], "country": "BE"}),
    );
    sys.accept(a, &reg).await;
    let mut check =
        event(&node, "ado-l5", "verified", serde_json::json!({"lots": ["L5"], "carats": "2400.00", "verification": "ADO-L5", "finding": "conforms"}));
    check["occurred_at"] = serde_json::json!("2024-09-30T08:00:00Z");
    sys.accept(&node, &check).await;
    sys.projection_caught_up().await;
    let base = sys.start_gateway();
    let profile = sys.dir.path().join("chromium");
    let dom_of = |url: String| {
        let profile = profile.clone();
        tokio::task::spawn_blocking(move || String::from_utf8_lossy(&browse(&profile, &["--dump-dom"], &url).stdout).into_owned())
    };

    let l5 = dom_of(format!("{base}/?lot=L5&date=2024-11-15")).await.unwrap();
    assert!(l5.contains(r#"data-vouched="verified""#) && l5.contains("verified by Antwerp Diamond Office (ADO-L5)"), "{}", &l5[..l5.len().min(3000)]);
    let s1 = dom_of(format!("{base}/?lot=S1&date=2024-11-15")).await.unwrap();
    assert!(s1.contains(r#"data-vouched="declared""#) && !s1.contains(r#"data-vouched="verified""#));
    let href = "/v1/lots/S1/certificate?rules=us-2022,us-2024,eu-2024,eu-2025,uk-2024&amp;date=2024-11-15";
    assert!(s1.contains(href), "the page links to S1's certificate");

    // It carries every party's envelopes: regulators only, by a signed request.
    let path = href.replace("&amp;", "&");
    let anonymous = reqwest::get(format!("{base}{path}")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let trader = custody::demo::Cast::load_or_create(nkeys::KeyPair::new_user(), &sys.dir.path().join("keys")).unwrap().trader_ae;
    let signed = |k: &nkeys::KeyPair| custody_proto::request::sign(k, "GET", &path, custody_proto::Timestamp::now()).unwrap();
    let http = reqwest::Client::new();
    let refused = http.get(format!("{base}{path}")).header("authorization", signed(&trader)).send().await.unwrap();
    assert_eq!(refused.status(), 403, "a trader may not have every party's envelopes");
    let regulator = sys.actor("customs", "regulator", "US").await;
    sys.projection_caught_up().await;
    let cert: serde_json::Value = http.get(format!("{base}{path}")).header("authorization", signed(&regulator)).send().await.unwrap().json().await.unwrap();
    assert_eq!(cert["lot"], "S1", "{cert}");
    let link = |c: &serde_json::Value| {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string());
        format!("{base}/?lot=S1&date=2024-11-15#certificate={b64}")
    };
    let good = dom_of(link(&cert)).await.unwrap();
    assert!(good.contains(r#"data-valid="true""#), "{}", &good[good.find("id=\"drop\"").unwrap_or(0)..]);
    assert!(
        good.contains(r#"data-current="true""#) && good.contains("Still current as of the ledger's checkpoint"),
        "{}",
        &good[good.find("id=\"drop\"").unwrap_or(0)..]
    );
    // Flagged after it was made: the page says the certificate is no longer current, and why.
    let mut flag = event(&regulator, "page-flag-l1", "flagged", serde_json::json!({"lot": "L1", "reason": "sanctions evasion inquiry"}));
    flag["occurred_at"] = serde_json::json!("2024-10-01T08:00:00Z");
    sys.accept(&regulator, &flag).await;
    let stale = dom_of(link(&cert)).await.unwrap();
    assert!(stale.contains(r#"data-valid="true""#) && stale.contains(r#"data-current="false""#), "{}", &stale[stale.find("id=\"drop\"").unwrap_or(0)..]);
    assert!(stale.contains("lot L1: 1 new entry") && stale.contains("(flagged)"), "{}", &stale[stale.find("id=\"drop\"").unwrap_or(0)..]);
    let mut tampered = cert.clone();
    tampered["claims"]["admissibility"][1]["verdict"] = serde_json::json!("admissible");
    let bad = dom_of(link(&tampered)).await.unwrap();
    assert!(bad.contains(r#"data-valid="false""#) && bad.contains(r#"data-check="claim_mismatch""#), "{}", &bad[bad.find("id=\"drop\"").unwrap_or(0)..]);
}
