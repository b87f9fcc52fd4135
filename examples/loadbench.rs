//! The load benchmark behind `bench/run.sh`: generates the cassettes and request lists,
//! starts every subject, drives it with `wrk`, and writes the results table into
//! `BENCHMARKS.md`.
//!
//! Subjects (each started afresh for every run, runs interleaved across subjects):
//! - `ceiling`: `examples/ceiling.rs`, a bare hyper server answering a fixed entity;
//! - `emulator`: `graphvcr emulate`, called directly;
//! - `replay-1k` / `replay-100k`: `graphvcr serve --mode replay` on cassettes of 1,000 and
//!   100,000 distinct deviceStatuses PATCH interactions, the load cycling through all of
//!   them with JSON bodies whose keys come in the reverse of the recorded order;
//! - `record`: `graphvcr serve --mode record` in front of the emulator (durability on:
//!   every answer waits for its flush);
//! - `passthrough`: `graphvcr serve --mode passthrough` in front of the emulator.
//!
//! Measured per subject and run: requests/s, p50 and p99 latency and errors at
//! concurrency 1 and 64, the subject's CPU time per request (its own process only, from
//! `/proc/<pid>/stat`) and the share of the machine's CPU time the host took (steal, from
//! `/proc/stat`) during each load, peak RSS (`VmHWM`), and start-up time (spawn to the
//! `listening on` line). The table holds the median of the runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use graphvcr::record::{
    ExportDocument, ExportedBody, ExportedInteraction, ExportedRequest, ExportedResponse, Header,
    EXPORT_VERSION,
};
use serde_json::{json, Map, Value};

const RESULTS_START: &str = "<!-- bench:results:start -->";
const RESULTS_END: &str = "<!-- bench:results:end -->";
const BUDGET_START: &str = "<!-- bench:budget:start -->";
const BUDGET_END: &str = "<!-- bench:budget:end -->";
/// How long a subject may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a subject may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const CONFIGURATION_ID: &str = "bench-configuration";
const STATUSES: [&str; 8] = graphvcr::graph::DEVICE_STATUS_VALUES;

#[derive(Debug, Parser)]
#[command(about = "graphvcr load benchmark (run it through bench/run.sh)")]
struct Options {
    /// The release graphvcr binary.
    #[arg(long)]
    graphvcr: PathBuf,
    /// The release ceiling example binary.
    #[arg(long)]
    ceiling: PathBuf,
    /// The wrk Lua script (bench/wrk.lua).
    #[arg(long)]
    lua: PathBuf,
    /// Scratch directory for cassettes, stores, request lists and logs (emptied first).
    #[arg(long)]
    work: PathBuf,
    /// Markdown file whose results section is replaced.
    #[arg(long)]
    out: PathBuf,
    /// The command line to show in the table.
    #[arg(long)]
    command: String,
    /// Seconds of measured load per concurrency level.
    #[arg(long, default_value_t = 5)]
    duration: u32,
    /// Seconds of unmeasured load before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Runs per subject; the table shows the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Interactions in the small cassette.
    #[arg(long, default_value_t = 1_000)]
    small: usize,
    /// Interactions in the large cassette.
    #[arg(long, default_value_t = 100_000)]
    large: usize,
    /// Subjects to run (default: all), comma-separated.
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<String>,
    /// When the whole command began (Unix seconds), for the table's note on how long
    /// it took, build included; bench/run.sh passes it.
    #[arg(long)]
    started: Option<u64>,
    /// The budget instead of the subjects: runs only the ceiling, once with each of
    /// these µs of CPU work added to every request (`--work-us`), at concurrency 64, and
    /// writes the budget table (between the `bench:budget` markers), e.g. `5,10,20,30`.
    /// The bare ceiling (0) is always measured as well: the ratios are to it.
    #[arg(long, value_delimiter = ',')]
    ceiling_work_us: Vec<u32>,
}

type Failure = String;

fn main() {
    let options = Options::parse();
    if let Err(message) = run(&options) {
        eprintln!("loadbench: {message}");
        std::process::exit(1);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    Ceiling,
    Emulator,
    ReplaySmall,
    ReplayLarge,
    Record,
    Passthrough,
}

impl Subject {
    const ALL: [Subject; 6] = [
        Subject::Ceiling,
        Subject::Emulator,
        Subject::ReplaySmall,
        Subject::ReplayLarge,
        Subject::Record,
        Subject::Passthrough,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Ceiling => "ceiling",
            Self::Emulator => "emulator",
            Self::ReplaySmall => "replay-1k",
            Self::ReplayLarge => "replay-100k",
            Self::Record => "record",
            Self::Passthrough => "passthrough",
        }
    }

    fn describe(self, options: &Options) -> String {
        match self {
            Self::Ceiling => "bare hyper server, fixed ~500-byte answer".to_owned(),
            Self::Emulator => "`graphvcr emulate`, direct".to_owned(),
            Self::ReplaySmall => format!("`serve --mode replay`, {} interactions", options.small),
            Self::ReplayLarge => format!("`serve --mode replay`, {} interactions", options.large),
            Self::Record => "`serve --mode record` → emulator, flush before answer".to_owned(),
            Self::Passthrough => "`serve --mode passthrough` → emulator".to_owned(),
        }
    }

    fn needs_emulator_upstream(self) -> bool {
        matches!(self, Self::Record | Self::Passthrough)
    }

    /// The `x-graphvcr-outcome` a correct answer carries, for graphvcr's proxy modes.
    fn expected_outcome(self) -> Option<&'static str> {
        match self {
            Self::ReplaySmall | Self::ReplayLarge => Some("replayed"),
            Self::Record => Some("recorded"),
            Self::Passthrough => Some("forwarded"),
            Self::Ceiling | Self::Emulator => None,
        }
    }
}

/// One wrk run.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Socket errors (connect, read, write, timeout).
    socket_errors: u64,
    /// Responses with a status above 399 (replay misses, 599, included).
    error_statuses: u64,
    requests: u64,
    /// The subject's CPU time (user + system, all threads) per completed request.
    cpu_us_per_request: f64,
    /// Share of the machine's CPU time taken by the host during the load (steal): how much
    /// a virtual machine's neighbours disturbed this measurement.
    steal_percent: f64,
}

/// One start of one subject.
#[derive(Debug, Clone, Copy)]
struct Sample {
    c1: Load,
    c64: Load,
    peak_rss_kib: u64,
    startup_ms: f64,
}

struct Paths {
    small_store: PathBuf,
    large_store: PathBuf,
    small_requests: PathBuf,
    large_requests: PathBuf,
}

fn run(options: &Options) -> Result<(), Failure> {
    if !options.ceiling_work_us.is_empty() {
        return run_budget(options);
    }
    let subjects = selected_subjects(options)?;
    check_tools(options)?;
    empty_work_directory(options)?;

    let mut notes = Vec::new();
    let began = Instant::now();
    let paths = prepare_data(options, &subjects, &mut notes)?;
    let prepared = began.elapsed();

    let load_before = load_average();
    let mut samples: BTreeMap<Subject, Vec<Sample>> = BTreeMap::new();
    for run in 1..=options.runs {
        for &subject in &subjects {
            eprintln!("== run {run}/{}: {}", options.runs, subject.name());
            let sample = measure(options, &paths, subject, run)?;
            eprintln!(
                "   c1 {:.0} req/s p99 {:.2} ms | c64 {:.0} req/s p99 {:.2} ms | errors {}+{} / {}+{} | rss {} KiB | start {:.1} ms",
                sample.c1.requests_per_second,
                sample.c1.p99_ms,
                sample.c64.requests_per_second,
                sample.c64.p99_ms,
                sample.c1.socket_errors,
                sample.c1.error_statuses,
                sample.c64.socket_errors,
                sample.c64.error_statuses,
                sample.peak_rss_kib,
                sample.startup_ms
            );
            samples.entry(subject).or_default().push(sample);
        }
    }
    let medians: BTreeMap<Subject, Sample> = samples
        .iter()
        .map(|(subject, list)| (*subject, median_sample(list)))
        .collect();
    notes.push(format!(
        "load average (1, 5, 15 min) before the runs: {load_before}; after: {}. The machine is shared: other work running at the same time lowers every subject's numbers, and the ratios less so, since runs are interleaved",
        load_average()
    ));
    notes.push(duration_note(options.started, prepared, began.elapsed()));
    let section = render(options, &medians, &notes)?;
    println!("{section}");
    write_section(&options.out, &section, RESULTS_START, RESULTS_END)
}

fn empty_work_directory(options: &Options) -> Result<(), Failure> {
    if options.work.exists() {
        std::fs::remove_dir_all(&options.work)
            .map_err(|e| format!("cannot empty {}: {e}", options.work.display()))?;
    }
    std::fs::create_dir_all(options.work.join("logs"))
        .map_err(|e| format!("cannot create {}: {e}", options.work.display()))
}

/// What a request handler may cost: the ceiling with a fixed amount of CPU work added to
/// each request, under the same load as the subjects. The work is a spin that touches no
/// memory, so the figures are the most a real handler's µs can buy.
fn run_budget(options: &Options) -> Result<(), Failure> {
    if !options.subjects.is_empty() {
        return Err("--ceiling-work-us runs only the ceiling; leave out --subjects".to_owned());
    }
    let mut works = options.ceiling_work_us.clone();
    works.push(0);
    works.sort_unstable();
    works.dedup();
    check_tools(options)?;
    empty_work_directory(options)?;
    let began = Instant::now();
    let requests = options.work.join("requests-small.tsv");
    write_requests(&requests, options.small)?;
    let load_before = load_average();
    let mut loads: BTreeMap<u32, Vec<Load>> = BTreeMap::new();
    for run in 1..=options.runs {
        for &work_us in &works {
            eprintln!("== run {run}/{}: ceiling + {work_us} µs", options.runs);
            let label = format!("ceiling-work{work_us}-{run}");
            let process = start_ceiling(options, &label, work_us)?;
            preflight(&process, &requests, Subject::Ceiling)?;
            let url = format!("http://{}", process.addr);
            if options.warmup > 0 {
                wrk(options, &url, &requests, 64, options.warmup, process.pid())?;
            }
            let load = wrk(
                options,
                &url,
                &requests,
                64,
                options.duration,
                process.pid(),
            )?;
            eprintln!(
                "   c64 {:.0} req/s p99 {:.2} ms, {:.1} µs CPU/req",
                load.requests_per_second, load.p99_ms, load.cpu_us_per_request
            );
            let status = process.stop()?;
            if !status.success() {
                return Err(format!("the ceiling exited with {status} after SIGTERM"));
            }
            loads.entry(work_us).or_default().push(load);
        }
    }
    let medians: BTreeMap<u32, Load> = loads
        .iter()
        .map(|(work, list)| (*work, median_load(list)))
        .collect();
    let mut out = provenance(options);
    let _ = writeln!(
        out,
        "- the ceiling started afresh for each amount of work and each of {} runs, interleaved; per run {} s warm-up, then {} s at concurrency 64 (`wrk -t2 -c64`, the subjects' load); the table shows the median of the runs",
        options.runs, options.warmup, options.duration
    );
    let _ = writeln!(
        out,
        "- load average (1, 5, 15 min) before: {load_before}; after: {}; {:.1} min in all",
        load_average(),
        began.elapsed().as_secs_f64() / 60.0
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| work added per request µs | req/s | × bare ceiling | p99 ms | CPU µs/req | host steal % |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
    let bare = medians.get(&0).map(|l| l.requests_per_second);
    for (work, load) in &medians {
        let _ = writeln!(
            out,
            "| {work} | {:.0} | {} | {:.3} | {:.1} | {:.1} |",
            load.requests_per_second,
            ratio(load.requests_per_second, bare),
            load.p99_ms,
            load.cpu_us_per_request,
            load.steal_percent
        );
    }
    if let Some(allowed) = bare.and_then(|bare| work_for_share(&medians, bare, 0.6)) {
        let _ = writeln!(
            out,
            "\nAt 0.6× the bare ceiling's throughput a handler may add about **{allowed:.0} µs** of CPU per request (interpolated between the rows around 0.6×)."
        );
    }
    println!("{out}");
    write_section(&options.out, &out, BUDGET_START, BUDGET_END)
}

/// The work (µs) at which throughput falls to `share` of `bare`, interpolated linearly
/// between the two measured amounts around it; `None` when no pair brackets it.
fn work_for_share(medians: &BTreeMap<u32, Load>, bare: f64, share: f64) -> Option<f64> {
    let points: Vec<(f64, f64)> = medians
        .iter()
        .map(|(work, load)| (f64::from(*work), load.requests_per_second / bare))
        .collect();
    points.windows(2).find_map(|pair| {
        let ((w0, r0), (w1, r1)) = (pair[0], pair[1]);
        (r0 >= share && r1 <= share && r0 > r1).then(|| w0 + (w1 - w0) * (r0 - share) / (r0 - r1))
    })
}

/// How long the benchmark took: the whole command when its start is known (build and
/// wrk's installation included), and the cassettes and the runs on their own.
fn duration_note(started: Option<u64>, prepared: Duration, benchmark: Duration) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let whole = match started {
        Some(started) if started <= now => {
            format!("{:.1} min in all; ", (now - started) as f64 / 60.0)
        }
        _ => String::new(),
    };
    format!(
        "duration: {whole}generating and importing the cassettes {:.0} s, the runs {:.1} min",
        prepared.as_secs_f64(),
        (benchmark - prepared).as_secs_f64() / 60.0
    )
}

fn selected_subjects(options: &Options) -> Result<Vec<Subject>, Failure> {
    if options.subjects.is_empty() {
        return Ok(Subject::ALL.to_vec());
    }
    options
        .subjects
        .iter()
        .map(|name| {
            Subject::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = Subject::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown subject {name:?}; known: {}", known.join(", "))
                })
        })
        .collect()
}

fn check_tools(options: &Options) -> Result<(), Failure> {
    for path in [&options.graphvcr, &options.ceiling, &options.lua] {
        if !path.is_file() {
            return Err(format!("{} does not exist; build first", path.display()));
        }
    }
    let wrk = Command::new("wrk").arg("-v").output();
    if wrk.is_err() {
        return Err("wrk is not installed (bench/run.sh installs it)".to_owned());
    }
    if options.runs == 0 || options.duration == 0 {
        return Err("--runs and --duration must be at least 1".to_owned());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Data

fn status_id(index: usize) -> String {
    format!("{index:08x}-0000-4000-8000-{:012x}", index * 7919)
}

fn status_path(index: usize) -> String {
    format!(
        "/v1.0/deviceManagement/deviceConfigurations/{CONFIGURATION_ID}/deviceStatuses/{}",
        status_id(index)
    )
}

/// The PATCH body of interaction `index`, keys in the recorded order.
fn patch_body(index: usize) -> Map<String, Value> {
    let mut body = Map::new();
    for (name, value) in [
        (
            "@odata.type",
            json!("#microsoft.graph.deviceConfigurationDeviceStatus"),
        ),
        ("deviceDisplayName", json!(format!("Device {index}"))),
        ("userName", json!(format!("User {index}"))),
        ("deviceModel", json!(format!("Model {}", index % 97))),
        (
            "complianceGracePeriodExpirationDateTime",
            json!(format!(
                "2026-12-{:02}T10:{:02}:00Z",
                1 + index % 28,
                index % 60
            )),
        ),
        ("status", json!(STATUSES[index % STATUSES.len()])),
        (
            "lastReportedDateTime",
            json!(format!(
                "2026-11-{:02}T08:{:02}:00Z",
                1 + index % 28,
                index % 60
            )),
        ),
        (
            "userPrincipalName",
            json!(format!("user{index}@contoso.example")),
        ),
    ] {
        body.insert(name.to_owned(), value);
    }
    body
}

/// The same body with its keys in the reverse order: equal as JSON, different as bytes.
fn reordered(body: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in body.iter().rev() {
        out.insert(name.clone(), value.clone());
    }
    out
}

/// The recorded answer: the updated entity, about 500 bytes.
fn response_body(index: usize, patch: &Map<String, Value>) -> Value {
    let mut entity = Map::new();
    entity.insert(
        "@odata.context".to_owned(),
        json!(format!(
            "https://graph.microsoft.com/v1.0/$metadata#deviceManagement/deviceConfigurations('{CONFIGURATION_ID}')/deviceStatuses/$entity"
        )),
    );
    entity.insert(
        "@odata.type".to_owned(),
        json!("#microsoft.graph.deviceConfigurationDeviceStatus"),
    );
    entity.insert("id".to_owned(), json!(status_id(index)));
    for (name, value) in patch {
        if name != "@odata.type" {
            entity.insert(name.clone(), value.clone());
        }
    }
    Value::Object(entity)
}

fn header(name: &str, value: &str) -> Header {
    Header::new(name, value.as_bytes())
}

fn export_document(cassette: &str, count: usize) -> ExportDocument {
    let interactions = (0..count)
        .map(|index| {
            let patch = patch_body(index);
            ExportedInteraction {
                id: index as u64 + 1,
                recorded_at: "2026-11-29T00:00:00.000Z".to_owned(),
                upstream_latency_ms: 1.0,
                request: ExportedRequest {
                    method: "PATCH".to_owned(),
                    uri: status_path(index),
                    host: None,
                    headers: vec![
                        header("content-type", "application/json"),
                        header("authorization", "Bearer [REDACTED]"),
                    ],
                    body: ExportedBody::Json(Value::Object(patch.clone())),
                    decoded: None,
                },
                response: ExportedResponse {
                    status: 200,
                    headers: vec![
                        header("content-type", graphvcr::graph::JSON_CONTENT_TYPE),
                        header(
                            "request-id",
                            &format!("{:08x}-1111-4000-8000-000000000000", index),
                        ),
                    ],
                    body: ExportedBody::Json(response_body(index, &patch)),
                    decoded: None,
                },
            }
        })
        .collect();
    ExportDocument {
        graphvcr_export: EXPORT_VERSION,
        cassette: cassette.to_owned(),
        interactions,
    }
}

/// One `PATCH <TAB> path <TAB> body` line per interaction, bodies reordered.
fn write_requests(path: &Path, count: usize) -> Result<(), Failure> {
    let file = File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let mut out = BufWriter::new(file);
    for index in 0..count {
        let body = Value::Object(reordered(&patch_body(index)));
        writeln!(out, "PATCH\t{}\t{body}", status_path(index))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    out.flush()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn prepare_data(
    options: &Options,
    subjects: &[Subject],
    notes: &mut Vec<String>,
) -> Result<Paths, Failure> {
    let work = &options.work;
    let paths = Paths {
        small_store: work.join("store-small"),
        large_store: work.join("store-large"),
        small_requests: work.join("requests-small.tsv"),
        large_requests: work.join("requests-large.tsv"),
    };
    write_requests(&paths.small_requests, options.small)?;
    let wanted = [
        (Subject::ReplaySmall, options.small, &paths.small_store),
        (Subject::ReplayLarge, options.large, &paths.large_store),
    ];
    for (subject, count, store) in wanted {
        if !subjects.contains(&subject) {
            continue;
        }
        if subject == Subject::ReplayLarge {
            write_requests(&paths.large_requests, count)?;
        }
        let export = work.join(format!("export-{count}.json"));
        let started = Instant::now();
        let document = export_document("bench", count);
        let file =
            File::create(&export).map_err(|e| format!("cannot write {}: {e}", export.display()))?;
        let mut writer = BufWriter::new(file);
        serde_json::to_writer(&mut writer, &document)
            .map_err(|e| format!("cannot write {}: {e}", export.display()))?;
        writer
            .flush()
            .map_err(|e| format!("cannot write {}: {e}", export.display()))?;
        let generated = started.elapsed();
        let size = std::fs::metadata(&export).map(|m| m.len()).unwrap_or(0);

        let started = Instant::now();
        let output = Command::new(&options.graphvcr)
            .args(["cassette", "import"])
            .arg(&export)
            .arg("--store")
            .arg(store)
            .current_dir(work)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run graphvcr cassette import: {e}"))?;
        let imported = started.elapsed();
        if !output.status.success() {
            return Err(format!(
                "graphvcr cassette import {} failed ({}): {}",
                export.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let note = format!(
            "cassette of {count} interactions: export document {:.1} MB generated in {:.1} s, `graphvcr cassette import` took {:.1} s, store {:.1} MB on disk",
            size as f64 / 1e6,
            generated.as_secs_f64(),
            imported.as_secs_f64(),
            directory_size(store) as f64 / 1e6
        );
        eprintln!("{note}");
        notes.push(note);
    }
    Ok(paths)
}

fn directory_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

// ---------------------------------------------------------------------------------------
// Processes

/// A started subject; killed if dropped without [`Process::stop`].
struct Process {
    child: Child,
    name: String,
    addr: SocketAddr,
    startup: Duration,
    log: PathBuf,
    /// Copies stderr to the log; ends when the process closes stderr.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Spawns `command` with stderr to `log` and waits for its `listening on` line.
    fn start(mut command: Command, name: &str, log: PathBuf) -> Result<Self, Failure> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            return Err(format!("{name}: stderr is not piped"));
        };
        let file =
            File::create(&log).map_err(|e| format!("cannot write {}: {e}", log.display()))?;
        let (ready_tx, ready_rx) = mpsc::channel::<(Instant, String)>();
        // The reader copies everything to the log (after the ready line, with io::copy,
        // which moves pipe data to the file without passing through user space).
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut file = file;
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let _ = file.write_all(line.as_bytes());
                if let Some(url) = line.trim().strip_prefix("listening on ") {
                    let _ = ready_tx.send((Instant::now(), url.to_owned()));
                    break;
                }
            }
            let _ = file.write_all(reader.buffer());
            let mut rest = reader.into_inner();
            let _ = std::io::copy(&mut rest, &mut file);
        });
        let (ready_at, url) = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(ready) => ready,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} printed no `listening on` line within {START_TIMEOUT:?}; its log:\n{}",
                    tail_of(&log)
                ));
            }
        };
        let addr = url
            .trim_start_matches("http://")
            .parse::<SocketAddr>()
            .map_err(|_| format!("{name} printed an unexpected address: {url:?}"))?;
        Ok(Self {
            child,
            name: name.to_owned(),
            addr,
            startup: ready_at.duration_since(started),
            log,
            reader: Some(reader),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far, from /proc.
    fn peak_rss_kib(&self) -> Result<u64, Failure> {
        let path = format!("/proc/{}/status", self.child.id());
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
        text.lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no VmHWM line in {path}"))
    }

    /// SIGTERM, then wait; a subject that does not exit in time is killed and reported.
    fn stop(mut self) -> Result<ExitStatus, Failure> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    // The whole log is on disk once the copier has seen the end of stderr.
                    if let Some(reader) = self.reader.take() {
                        let _ = reader.join();
                    }
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!(
                        "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
                        self.name
                    ));
                }
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn graphvcr_command(options: &Options, args: &[&str]) -> Command {
    let mut command = Command::new(&options.graphvcr);
    command.args(args).current_dir(&options.work);
    command
}

fn start_emulator(options: &Options, label: &str) -> Result<Process, Failure> {
    Process::start(
        graphvcr_command(options, &["emulate", "--listen", "127.0.0.1:0"]),
        "graphvcr emulate",
        options.work.join("logs").join(format!("{label}.log")),
    )
}

fn start_ceiling(options: &Options, label: &str, work_us: u32) -> Result<Process, Failure> {
    let mut command = Command::new(&options.ceiling);
    command.args(["--listen", "127.0.0.1:0"]);
    if work_us > 0 {
        command.args(["--work-us", &work_us.to_string()]);
    }
    Process::start(
        command,
        "ceiling",
        options.work.join("logs").join(format!("{label}.log")),
    )
}

fn start_proxy(
    options: &Options,
    mode: &str,
    store: &Path,
    upstream: &str,
    label: &str,
) -> Result<Process, Failure> {
    let store = store.to_string_lossy().into_owned();
    Process::start(
        graphvcr_command(
            options,
            &[
                "serve",
                "--mode",
                mode,
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                upstream,
                "--store",
                &store,
                "--cassette",
                "bench",
            ],
        ),
        &format!("graphvcr serve --mode {mode}"),
        options.work.join("logs").join(format!("{label}.log")),
    )
}

/// Starts `subject` (and the emulator in front of which it runs, when it needs one),
/// checks one request, loads it at concurrency 1 and 64, and stops it.
fn measure(
    options: &Options,
    paths: &Paths,
    subject: Subject,
    run: usize,
) -> Result<Sample, Failure> {
    let label = format!("{}-{run}", subject.name());
    let upstream = if subject.needs_emulator_upstream() {
        Some(start_emulator(options, &format!("{label}-upstream"))?)
    } else {
        None
    };
    let upstream_url = upstream
        .as_ref()
        .map(|p| format!("http://{}", p.addr))
        .unwrap_or_else(|| "http://127.0.0.1:9".to_owned());
    let requests = match subject {
        Subject::ReplayLarge => &paths.large_requests,
        _ => &paths.small_requests,
    };
    let process = match subject {
        Subject::Ceiling => start_ceiling(options, &label, 0)?,
        Subject::Emulator => start_emulator(options, &label)?,
        Subject::ReplaySmall => {
            start_proxy(options, "replay", &paths.small_store, &upstream_url, &label)?
        }
        Subject::ReplayLarge => {
            start_proxy(options, "replay", &paths.large_store, &upstream_url, &label)?
        }
        Subject::Record | Subject::Passthrough => {
            let mode = if subject == Subject::Record {
                "record"
            } else {
                "passthrough"
            };
            let store = options.work.join(format!("store-{label}"));
            start_proxy(options, mode, &store, &upstream_url, &label)?
        }
    };
    let startup_ms = process.startup.as_secs_f64() * 1000.0;
    preflight(&process, requests, subject)?;
    let url = format!("http://{}", process.addr);
    if options.warmup > 0 {
        wrk(options, &url, requests, 64, options.warmup, process.pid())?;
    }
    let c1 = wrk(options, &url, requests, 1, options.duration, process.pid())?;
    let c64 = wrk(options, &url, requests, 64, options.duration, process.pid())?;
    let peak_rss_kib = process.peak_rss_kib()?;
    let log = process.log.clone();
    let status = process.stop()?;
    if !status.success() {
        return Err(format!(
            "{} exited with {status} after SIGTERM; its log:\n{}",
            subject.name(),
            tail_of(&log)
        ));
    }
    if let Some(upstream) = upstream {
        upstream.stop()?;
    }
    Ok(Sample {
        c1,
        c64,
        peak_rss_kib,
        startup_ms,
    })
}

/// Sends the first request of the list once and checks the answer, so that a broken
/// subject fails the benchmark loudly instead of producing fast error responses.
fn preflight(process: &Process, requests: &Path, subject: Subject) -> Result<(), Failure> {
    let file =
        File::open(requests).map_err(|e| format!("cannot read {}: {e}", requests.display()))?;
    let mut first = String::new();
    BufReader::new(file)
        .read_line(&mut first)
        .map_err(|e| format!("cannot read {}: {e}", requests.display()))?;
    let mut parts = first.trim_end_matches('\n').splitn(3, '\t');
    let (Some(method), Some(path), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("malformed first line in {}", requests.display()));
    };
    let mut stream = TcpStream::connect(process.addr)
        .map_err(|e| format!("cannot connect to {}: {e}", process.name))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\nauthorization: Bearer x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        process.addr,
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send to {}: {e}", process.name))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("cannot read from {}: {e}", process.name))?;
    let text = String::from_utf8_lossy(&response);
    let status_ok = text.starts_with("HTTP/1.1 200");
    let outcome_ok = subject.expected_outcome().is_none_or(|outcome| {
        text.lines()
            .any(|line| line.eq_ignore_ascii_case(&format!("x-graphvcr-outcome: {outcome}")))
    });
    if status_ok && outcome_ok {
        Ok(())
    } else {
        Err(format!(
            "{} answered the first benchmark request wrongly (expected 200{}):\n{}",
            subject.name(),
            subject
                .expected_outcome()
                .map(|o| format!(" with x-graphvcr-outcome: {o}"))
                .unwrap_or_default(),
            text.chars().take(2000).collect::<String>()
        ))
    }
}

fn wrk(
    options: &Options,
    url: &str,
    requests: &Path,
    connections: u32,
    seconds: u32,
    subject_pid: u32,
) -> Result<Load, Failure> {
    let threads = connections.min(2);
    let cpu_before = process_cpu_ticks(subject_pid)?;
    let machine_before = machine_ticks()?;
    let output = Command::new("wrk")
        .arg("-t")
        .arg(threads.to_string())
        .arg("-c")
        .arg(connections.to_string())
        .arg("-d")
        .arg(format!("{seconds}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(&options.lua)
        .arg(url)
        .arg("--")
        .arg(requests)
        .arg(threads.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let cpu_ticks = process_cpu_ticks(subject_pid)?.saturating_sub(cpu_before);
    let machine = machine_ticks()?;
    let (steal, total) = (
        machine.steal.saturating_sub(machine_before.steal),
        machine.total.saturating_sub(machine_before.total),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(json) = stdout
        .lines()
        .find_map(|line| line.strip_prefix("WRKJSON "))
    else {
        return Err(format!(
            "wrk against {url} produced no result ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    };
    let value: Value =
        serde_json::from_str(json).map_err(|e| format!("wrk printed bad JSON {json:?}: {e}"))?;
    let number = |name: &str| value.get(name).and_then(Value::as_f64).unwrap_or(0.0);
    let duration_s = number("duration_us") / 1e6;
    if duration_s <= 0.0 {
        return Err(format!("wrk reported no duration: {json}"));
    }
    Ok(Load {
        requests_per_second: number("requests") / duration_s,
        p50_ms: number("p50_us") / 1000.0,
        p99_ms: number("p99_us") / 1000.0,
        socket_errors: (number("connect") + number("read") + number("write") + number("timeout"))
            as u64,
        error_statuses: number("status") as u64,
        requests: number("requests") as u64,
        cpu_us_per_request: cpu_ticks as f64 * 1e6
            / clock_ticks_per_second()
            / number("requests").max(1.0),
        steal_percent: if total == 0 {
            0.0
        } else {
            steal as f64 * 100.0 / total as f64
        },
    })
}

/// User + system time of a process and all its threads so far, in clock ticks.
fn process_cpu_ticks(pid: u32) -> Result<u64, Failure> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    // The command name, in parentheses, may hold spaces: fields are counted after it.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12th and 13th after the name.
    let tick = |at: usize| fields.get(at).and_then(|f| f.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err(format!("unexpected contents of {path}: {text:?}")),
    }
}

struct MachineTicks {
    steal: u64,
    total: u64,
}

/// The machine's CPU time so far (all CPUs), and the part of it the host took.
fn machine_ticks() -> Result<MachineTicks, Failure> {
    let text = std::fs::read_to_string("/proc/stat")
        .map_err(|e| format!("cannot read /proc/stat: {e}"))?;
    let counters: Vec<u64> = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    // already counted in user and nice.
    if counters.len() < 8 {
        return Err(format!("unexpected first line in /proc/stat: {text:.80?}"));
    }
    Ok(MachineTicks {
        steal: counters[7],
        total: counters[..8].iter().sum(),
    })
}

fn clock_ticks_per_second() -> f64 {
    command_output("getconf", &["CLK_TCK"])
        .parse::<f64>()
        .ok()
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------
// Results

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn median_load(loads: &[Load]) -> Load {
    let pick = |f: fn(&Load) -> f64| median(loads.iter().map(f).collect());
    Load {
        requests_per_second: pick(|l| l.requests_per_second),
        p50_ms: pick(|l| l.p50_ms),
        p99_ms: pick(|l| l.p99_ms),
        // Errors are summed, not medianed: one error in any run shows.
        socket_errors: loads.iter().map(|l| l.socket_errors).sum(),
        error_statuses: loads.iter().map(|l| l.error_statuses).sum(),
        requests: loads.iter().map(|l| l.requests).sum(),
        cpu_us_per_request: pick(|l| l.cpu_us_per_request),
        steal_percent: pick(|l| l.steal_percent),
    }
}

fn median_sample(samples: &[Sample]) -> Sample {
    let c1: Vec<Load> = samples.iter().map(|s| s.c1).collect();
    let c64: Vec<Load> = samples.iter().map(|s| s.c64).collect();
    Sample {
        c1: median_load(&c1),
        c64: median_load(&c64),
        peak_rss_kib: median(samples.iter().map(|s| s.peak_rss_kib as f64).collect()) as u64,
        startup_ms: median(samples.iter().map(|s| s.startup_ms).collect()),
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores (nproc), {model}, {memory_gib:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(base) if base > 0.0 => format!("{:.2}×", value / base),
        _ => "–".to_owned(),
    }
}

struct Target {
    text: String,
    measured: String,
    holds: Option<bool>,
}

fn targets(medians: &BTreeMap<Subject, Sample>) -> Vec<Target> {
    let get = |s: Subject| medians.get(&s);
    let mut out = Vec::new();
    let mut check = |text: &str, inputs: Option<(String, bool)>| {
        out.push(match inputs {
            Some((measured, holds)) => Target {
                text: text.to_owned(),
                measured,
                holds: Some(holds),
            },
            None => Target {
                text: text.to_owned(),
                measured: "not measured in this run".to_owned(),
                holds: None,
            },
        });
    };
    let replay = get(Subject::ReplaySmall);
    let large = get(Subject::ReplayLarge);
    let ceiling = get(Subject::Ceiling);
    let emulator = get(Subject::Emulator);
    let record = get(Subject::Record);
    let passthrough = get(Subject::Passthrough);
    check(
        "replay throughput at concurrency 64 ≥ 0.6× the ceiling's",
        replay.zip(ceiling).map(|(r, c)| {
            let x = r.c64.requests_per_second / c.c64.requests_per_second;
            (format!("{x:.2}×"), x >= 0.6)
        }),
    );
    check(
        "replay p99 at concurrency 64 ≤ 2× the ceiling's p99",
        replay.zip(ceiling).map(|(r, c)| {
            let x = r.c64.p99_ms / c.c64.p99_ms;
            (
                format!("{x:.2}× ({:.2} ms vs {:.2} ms)", r.c64.p99_ms, c.c64.p99_ms),
                x <= 2.0,
            )
        }),
    );
    for (level, pick) in [
        ("1", (|s: &Sample| s.c1) as fn(&Sample) -> Load),
        ("64", |s: &Sample| s.c64),
    ] {
        check(
            &format!(
                "replay at 100,000 within 15% of replay at 1,000, concurrency {level}: throughput"
            ),
            large.zip(replay).map(|(l, r)| {
                let x = pick(l).requests_per_second / pick(r).requests_per_second;
                (format!("{x:.2}×"), x >= 0.85)
            }),
        );
        check(
            &format!("replay at 100,000 within 15% of replay at 1,000, concurrency {level}: p99"),
            large.zip(replay).map(|(l, r)| {
                let x = pick(l).p99_ms / pick(r).p99_ms;
                (
                    format!(
                        "{x:.2}× ({:.2} ms vs {:.2} ms)",
                        pick(l).p99_ms,
                        pick(r).p99_ms
                    ),
                    x <= 1.15,
                )
            }),
        );
    }
    check(
        "record (durability on) ≥ 0.5× passthrough's throughput at concurrency 64",
        record.zip(passthrough).map(|(r, p)| {
            let x = r.c64.requests_per_second / p.c64.requests_per_second;
            (format!("{x:.2}×"), x >= 0.5)
        }),
    );
    check(
        "passthrough throughput ≥ 0.8× the emulator direct's (concurrency 64)",
        passthrough.zip(emulator).map(|(p, e)| {
            let x = p.c64.requests_per_second / e.c64.requests_per_second;
            (format!("{x:.2}×"), x >= 0.8)
        }),
    );
    check(
        "peak RSS ≤ 64 MiB with the 100,000-interaction cassette",
        large.map(|l| {
            let mib = l.peak_rss_kib as f64 / 1024.0;
            (format!("{mib:.1} MiB"), mib <= 64.0)
        }),
    );
    check(
        "start-up ≤ 200 ms with the 100,000-interaction cassette",
        large.map(|l| (format!("{:.1} ms", l.startup_ms), l.startup_ms <= 200.0)),
    );
    let errors: u64 = medians
        .values()
        .map(|s| {
            s.c1.socket_errors + s.c1.error_statuses + s.c64.socket_errors + s.c64.error_statuses
        })
        .sum();
    check(
        "no errors (socket errors or statuses ≥ 400, replay misses included) in any run",
        Some((format!("{errors}"), errors == 0)),
    );
    out
}

/// The lines every table opens with: when, where, which code and which command.
fn provenance(options: &Options) -> String {
    let mut out = String::new();
    let date = humantime::format_rfc3339_seconds(SystemTime::now());
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let _ = writeln!(out, "- date: {date}");
    let _ = writeln!(out, "- machine: {}", machine());
    let _ = writeln!(
        out,
        "- commit: {commit}{}; {}; {}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        command_output("rustc", &["--version"]),
        command_output("wrk", &["-v"])
    );
    let _ = writeln!(out, "- command: `{}`", options.command);
    out
}

fn render(
    options: &Options,
    medians: &BTreeMap<Subject, Sample>,
    notes: &[String],
) -> Result<String, Failure> {
    let mut out = provenance(options);
    let _ = writeln!(
        out,
        "- each subject started afresh for each of {} runs, interleaved; per run {} s warm-up at concurrency 64, then {} s at concurrency 1 (`wrk -t1 -c1`) and {} s at 64 (`wrk -t2 -c64`); the table shows the median of the runs (errors and requests: the sum)",
        options.runs, options.warmup, options.duration, options.duration
    );
    for note in notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| subject | what | conc. | req/s | p50 ms | p99 ms | errors (socket + ≥400) / requests | × ceiling | × emulator | CPU µs/req | host steal % | peak RSS MiB | start-up ms |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let ceiling = medians.get(&Subject::Ceiling);
    let emulator = medians.get(&Subject::Emulator);
    for (subject, sample) in medians {
        for (level, load, base_c, base_e) in [
            (
                1,
                sample.c1,
                ceiling.map(|c| c.c1.requests_per_second),
                emulator.map(|e| e.c1.requests_per_second),
            ),
            (
                64,
                sample.c64,
                ceiling.map(|c| c.c64.requests_per_second),
                emulator.map(|e| e.c64.requests_per_second),
            ),
        ] {
            let _ = writeln!(
                out,
                "| {} | {} | {level} | {:.0} | {:.3} | {:.3} | {} + {} / {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                subject.name(),
                subject.describe(options),
                load.requests_per_second,
                load.p50_ms,
                load.p99_ms,
                load.socket_errors,
                load.error_statuses,
                load.requests,
                ratio(load.requests_per_second, base_c),
                ratio(load.requests_per_second, base_e),
                load.cpu_us_per_request,
                load.steal_percent,
                sample.peak_rss_kib as f64 / 1024.0,
                sample.startup_ms,
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| target | measured | holds |");
    let _ = writeln!(out, "|---|---|---|");
    for target in targets(medians) {
        let holds = match target.holds {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(out, "| {} | {} | {holds} |", target.text, target.measured);
    }
    Ok(out)
}

/// Replaces the text between `start_marker` and `end_marker` in `path`.
fn write_section(
    path: &Path,
    section: &str,
    start_marker: &str,
    end_marker: &str,
) -> Result<(), Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (Some(start), Some(end)) = (text.find(start_marker), text.find(end_marker)) else {
        return Err(format!(
            "{} lacks the markers {start_marker} and {end_marker}",
            path.display()
        ));
    };
    if end < start {
        return Err(format!(
            "{}: the markers {start_marker} and {end_marker} are out of order",
            path.display()
        ));
    }
    let mut updated = String::with_capacity(text.len() + section.len());
    updated.push_str(&text[..start + start_marker.len()]);
    updated.push('\n');
    updated.push_str(section);
    updated.push_str(&text[end..]);
    std::fs::write(path, updated).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("results written to {}", path.display());
    Ok(())
}
