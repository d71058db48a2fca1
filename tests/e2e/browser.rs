//! The run page in a real browser: headless Chromium, driven through chromedriver
//! (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs), follows a run of
//! another process as it commits slices, and cancels it with its button.

use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::serve::serve;
use crate::support::{long_run_bucket, start_long_run, Case, Watched};

/// chromedriver on a free loopback port, and its address; fails with what to install if
/// it is missing.
fn chromedriver() -> (Watched, String) {
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().port()
    };
    let mut command = std::process::Command::new("chromedriver");
    command.arg(format!("--port={port}"));
    if which("chromedriver").is_none() || which("chromium").is_none() {
        panic!("the browser test needs chromium and chromedriver: apt-get install chromium chromium-driver (what .ci/run does)");
    }
    let mut driver = Watched::spawn(command);
    driver.line_where(Duration::from_secs(60), |l| {
        l.contains("started successfully")
    });
    (driver, format!("http://127.0.0.1:{port}"))
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

async fn browser(driver: &str) -> Client {
    let mut capabilities = serde_json::Map::new();
    let options = serde_json::json!({
        "binary": which("chromium").unwrap(),
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"],
    });
    capabilities.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(driver)
        .await
        .expect("a headless Chromium session")
}

/// The text of the element `id`, waiting for the page to have it.
async fn text_of(page: &Client, id: &str) -> String {
    let element = page
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Id(id));
    element.await.unwrap().text().await.unwrap_or_default()
}

/// Clicks the element `id`.
async fn click(page: &Client, id: &str) {
    let element = page.find(Locator::Id(id)).await.unwrap();
    element.click().await.unwrap();
}

/// Waits until the text of `id` satisfies `wanted`, failing after `limit`.
async fn until(page: &Client, id: &str, limit: Duration, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = text_of(page, id).await;
        if wanted(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "#{id} still says {text:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_run_page_in_chromium_updates_as_the_run_commits_and_its_button_cancels_it() {
    let case = Case::new("orders_clean");
    long_run_bucket(&case);
    let (_server, address) = serve(&case, None);
    let (_driver, driver) = chromedriver();
    // The browser starts before the run does: a first Chromium on a fresh machine can take
    // longer to start than the long run takes to end.
    let page = browser(&driver).await;

    let (running, id) = start_long_run(&case);
    page.goto(&format!("http://{address}/runs/orders_clean/{id}"))
        .await
        .unwrap();
    let status = text_of(&page, "status").await;
    assert!(
        status.starts_with("running"),
        "the long run ended first: {status}"
    );
    // The page follows the run by itself: the count of committed slices grows.
    // A read while the page redraws finds the element gone and reads as empty.
    let is_count = |n: &str| n.parse::<usize>().is_ok();
    let first = until(&page, "committed", Duration::from_secs(30), is_count).await;
    let first: usize = first.parse().unwrap();
    until(&page, "committed", Duration::from_secs(30), |n| {
        n.parse::<usize>().is_ok_and(|n| n > first)
    })
    .await;

    click(&page, "cancel").await;
    until(&page, "status", Duration::from_secs(60), |s| {
        s == "cancelled" || s.starts_with("cancelled")
    })
    .await;
    let (code, printed) = running.end_within(Duration::from_secs(60));
    assert_eq!(code, Some(130), "{printed}");
    assert!(
        printed.contains("the run page on"),
        "the stop says who asked: {printed}"
    );
    let committed = case.committed_slices().len().to_string();
    until(&page, "committed", Duration::from_secs(30), |n| {
        n == committed
    })
    .await;

    let screenshot = page.screenshot().await.unwrap();
    assert!(screenshot.starts_with(b"\x89PNG"));
    let folder = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(folder.join("run-page-cancelled.png"), screenshot).unwrap();
    page.close().await.unwrap();
}

#[tokio::test]
async fn a_run_launched_from_the_page_in_chromium_runs_the_plan_shown_and_a_changed_plan_is_shown_again(
) {
    let case = Case::new("orders_clean");
    let (_server, address) = serve(&case, None);
    let (_driver, driver) = chromedriver();
    let page = browser(&driver).await;
    page.goto(&format!("http://{address}/")).await.unwrap();
    click(&page, "launch").await;
    for (field, value) in [("start", "2024-01-01"), ("end", "2024-01-10")] {
        let input = page.find(Locator::Id(field)).await.unwrap();
        input.send_keys(value).await.unwrap();
    }
    click(&page, "show-plan").await;
    let shown = text_of(&page, "hash").await;
    let folder = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(
        folder.join("launch-plan.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // Another run commits a day after the plan was shown: launching it is refused, and
    // the page shows the plan as it is now.
    case.ok("run", &["--keys", "2024-01-05"], 0);
    click(&page, "launch").await;
    let changed = text_of(&page, "changed").await;
    assert!(
        changed.contains(&format!("The plan changed since {shown}")),
        "{changed}"
    );
    let now = text_of(&page, "hash").await;
    assert_ne!(now, shown);
    assert_eq!(
        case.json("history", &[], 0).as_array().unwrap().len(),
        1,
        "nothing was launched"
    );

    // Launching the plan shown now opens the run's page, which follows it to its end.
    click(&page, "launch").await;
    until(&page, "status", Duration::from_secs(120), |s| s == "done").await;
    let url = page.current_url().await.unwrap();
    assert!(url.path().starts_with("/runs/orders_clean/"), "{url}");
    assert_eq!(
        text_of(&page, "committed").await,
        "9",
        "the nine days not done"
    );
    assert_eq!(case.committed_slices().len(), 10);
    page.close().await.unwrap();
}
