//! What a run leaves behind: per-message samples, the throughput timeline, latency percentiles,
//! a progress bar while it runs, and a PNG plot (throughput over time, latency histogram).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use serde_json::json;

/// One accepted message: when its 250 came (ms since the run started) and how long it took
/// from the end of DATA.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at_ms: u32,
    pub latency_us: u32,
}

impl Sample {
    /// A message whose end of data was sent at `sent`, answered now.
    pub fn new(start: Instant, sent: Instant) -> Sample {
        let now = Instant::now();
        Sample {
            at_ms: now.duration_since(start).as_millis().min(u32::MAX as u128) as u32,
            latency_us: now.duration_since(sent).as_micros().min(u32::MAX as u128) as u32,
        }
    }
}

pub struct Samples {
    samples: Vec<Sample>,
    /// Latencies, sorted.
    sorted: Vec<u32>,
}

impl Samples {
    pub fn new(samples: Vec<Sample>) -> Samples {
        let mut sorted: Vec<u32> = samples.iter().map(|s| s.latency_us).collect();
        sorted.sort_unstable();
        Samples { samples, sorted }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The p-quantile of DATA-end -> 250, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        let i = ((self.sorted.len() as f64 - 1.0) * p).round() as usize;
        self.sorted[i] as f64 / 1000.0
    }

    pub fn latency_percentiles_ms(&self) -> serde_json::Value {
        let p = |q| self.percentile_ms(q);
        json!({ "p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p999": p(0.999), "max": p(1.0) })
    }

    pub fn times_ms(&self) -> impl Iterator<Item = u32> + '_ {
        self.samples.iter().map(|s| s.at_ms)
    }
}

/// Rounded to three decimals, for reports.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Events per second in buckets of `bucket_ms`, from event times in ms.
pub fn timeline(times_ms: impl Iterator<Item = u32>, bucket_ms: u32) -> Vec<f64> {
    let mut counts: Vec<u64> = Vec::new();
    for t in times_ms {
        let i = (t / bucket_ms) as usize;
        if counts.len() <= i {
            counts.resize(i + 1, 0);
        }
        counts[i] += 1;
    }
    counts.into_iter().map(|c| c as f64 * 1000.0 / bucket_ms as f64).collect()
}

/// A bucket width giving about 100 points over a run of `total_ms`, at least 100 ms.
pub fn bucket_for(total_ms: u32) -> u32 {
    (total_ms / 100).max(100).div_ceil(100) * 100
}

/// A progress bar on stderr when it is a terminal; a counter the workers bump either way.
pub struct Progress {
    bar: ProgressBar,
    done: Arc<AtomicU64>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn new(what: &str, total: u64) -> Progress {
        let bar = ProgressBar::new(total).with_message(what.to_string());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let done = Arc::new(AtomicU64::new(0));
        let (b, d) = (bar.clone(), done.clone());
        let ticker = tokio::spawn(async move {
            loop {
                b.set_position(d.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Progress { bar, done, ticker }
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// Prints above the bar (or plainly when there is no bar).
    pub fn println(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(self) {
        self.ticker.abort();
        self.bar.set_position(self.done.load(Ordering::Relaxed));
        self.bar.finish_and_clear();
    }
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_json(path: &Path, report: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

const FONT_PATHS: &[&str] =
    &["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];

/// plotters draws text with a font we hand it: DejaVu Sans from the system (Debian package
/// fonts-dejavu-core), read once.
fn register_font() -> anyhow::Result<()> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = FONT_PATHS.iter().find(|p| Path::new(p).exists()).ok_or_else(|| {
                "no DejaVu Sans font for the plot (apt-get install fonts-dejavu-core)".to_string()
            })?;
            let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes.leak())
                .map_err(|_| format!("{path} is not a usable font"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A throughput series for the plot: its name and msg/s per bucket.
pub struct Series<'a> {
    pub name: &'a str,
    pub per_second: Vec<f64>,
}

/// The throughput timeline alone (one line per series).
pub fn plot_timeline(
    path: &Path,
    title: &str,
    bucket_ms: u32,
    series: &[Series<'_>],
) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    timeline_chart(&root, bucket_ms, series)?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn timeline_chart(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    bucket_ms: u32,
    series: &[Series<'_>],
) -> anyhow::Result<()> {
    let secs = series.iter().map(|s| s.per_second.len()).max().unwrap_or(1) as f64
        * bucket_ms as f64
        / 1000.0;
    let peak = series.iter().flat_map(|s| s.per_second.iter().copied()).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .margin(15)
        .caption(format!("throughput (msg/s, {bucket_ms} ms buckets)"), ("sans-serif", 16))
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..secs.max(0.1), 0.0..peak * 1.1)?;
    chart.configure_mesh().x_desc("seconds").y_desc("msg/s").draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = s
            .per_second
            .iter()
            .enumerate()
            .map(|(k, &v)| ((k as f64 + 0.5) * bucket_ms as f64 / 1000.0, v));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    Ok(())
}

/// Draws the throughput timeline (one line per series) above the latency histogram.
pub fn plot(
    path: &Path,
    title: &str,
    bucket_ms: u32,
    series: &[Series<'_>],
    latencies: &Samples,
) -> anyhow::Result<()> {
    register_font()?;
    if latencies.len() == 0 {
        bail!("nothing to plot: no message was accepted");
    }
    let root = BitMapBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (top, bottom) = root.split_vertically(400);
    timeline_chart(&top, bucket_ms, series)?;

    // Latency histogram up to p99.9, so one outlier does not squash the shape.
    let hi = latencies.percentile_ms(0.999).max(0.01);
    const BINS: usize = 60;
    let width = hi / BINS as f64;
    let mut counts = [0u64; BINS];
    for &us in &latencies.sorted {
        let ms = us as f64 / 1000.0;
        if ms <= hi {
            counts[((ms / width) as usize).min(BINS - 1)] += 1;
        }
    }
    let most = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&bottom)
        .margin(15)
        .caption(
            format!(
                "DATA-end -> 250 latency (ms): p50 {:.2}, p99 {:.2}, p99.9 {:.2}",
                latencies.percentile_ms(0.5),
                latencies.percentile_ms(0.99),
                hi
            ),
            ("sans-serif", 16),
        )
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..hi, 0u64..most + most / 10 + 1)?;
    chart.configure_mesh().x_desc("ms").y_desc("messages").draw()?;
    chart.draw_series(counts.iter().enumerate().map(|(i, &c)| {
        let x0 = i as f64 * width;
        Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.6).filled())
    }))?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_counts_per_second() {
        // 3 events in the first 100 ms, none in the second, 1 in the third.
        let t = timeline([5u32, 50, 99, 250].into_iter(), 100);
        assert_eq!(t, vec![30.0, 0.0, 10.0]);
        assert_eq!(bucket_for(1_000), 100);
        assert_eq!(bucket_for(60_000), 600);
    }

    #[test]
    fn percentiles_and_plot() {
        let samples: Vec<Sample> =
            (0..1000).map(|i| Sample { at_ms: i, latency_us: 1000 + i * 10 }).collect();
        let s = Samples::new(samples);
        assert_eq!(s.percentile_ms(0.0), 1.0);
        assert_eq!(s.percentile_ms(1.0), 10.99);
        let dir = std::env::temp_dir().join(format!("loadtest-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let png = dir.join("p.png");
        let series = [Series { name: "accepted", per_second: timeline(s.times_ms(), 100) }];
        match plot(&png, "test", 100, &series, &s) {
            Ok(()) => {
                let bytes = std::fs::read(&png).unwrap();
                assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
                assert!(bytes.len() > 5_000, "{} bytes: an empty picture?", bytes.len());
            }
            // Without the font the plot cannot have text; CI installs it, so there it must work.
            Err(e) if std::env::var("CI").is_err() && e.to_string().contains("font") => {
                eprintln!("plot not tested: {e}")
            }
            Err(e) => panic!("{e:#}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
