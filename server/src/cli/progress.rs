//! What a long client command shows while it works: on a terminal, a bar per table with
//! bytes, bytes/s and (when the total is known) the time left; otherwise one line per
//! table when it is done, as text on stderr or, with `--json`, one JSON object per line
//! on stdout for scripts.

use std::io::IsTerminal as _;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The display of one command run.
#[derive(Debug, Clone)]
pub struct Progress {
    bars: Option<MultiProgress>,
    json: bool,
}

impl Progress {
    /// Bars when stderr is a terminal and `json` is off.
    pub fn new(json: bool) -> Self {
        let bars = (!json && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { bars, json }
    }

    /// Starts the display of table `name`, `total` bytes if known.
    pub fn table(&self, name: &str, total: Option<u64>) -> TableProgress {
        let bar = self.bars.as_ref().map(|bars| {
            let (bar, template) = match total {
                Some(total) => (
                    ProgressBar::new(total),
                    "{prefix:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                ),
                None => (
                    ProgressBar::no_length(),
                    "{prefix:>16} {spinner} {bytes} {bytes_per_sec} {elapsed}",
                ),
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let bar = bars.add(bar.with_style(style).with_prefix(name.to_owned()));
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        TableProgress {
            bar,
            json: self.json,
            started: Instant::now(),
        }
    }

    /// Prints a line that is not about one table (above the bars on a terminal).
    pub fn say(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            None if self.json => {}
            None => eprintln!("{line}"),
        }
    }
}

/// The display of one table.
#[derive(Debug)]
pub struct TableProgress {
    bar: Option<ProgressBar>,
    json: bool,
    started: Instant,
}

impl TableProgress {
    /// `n` more bytes done.
    pub fn inc(&self, n: u64) {
        self.counter().inc(n);
    }

    /// A handle that counts bytes done from elsewhere (e.g. inside a request stream).
    pub fn counter(&self) -> Counter {
        Counter(self.bar.clone())
    }

    /// The table is done: `line` for people, `record` for scripts.
    pub fn finish(self, line: &str, mut record: serde_json::Value) {
        let secs = self.started.elapsed().as_secs_f64();
        match &self.bar {
            Some(bar) => bar.finish_with_message(line.to_owned()),
            None if self.json => {
                if let Some(obj) = record.as_object_mut() {
                    obj.insert("seconds".into(), serde_json::json!(secs));
                }
                println!("{record}");
            }
            None => eprintln!("{line} in {secs:.1} s"),
        }
    }
}

/// Counts bytes done for one table's display.
#[derive(Debug, Clone)]
pub struct Counter(Option<ProgressBar>);

impl Counter {
    /// `n` more bytes done.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }
}
