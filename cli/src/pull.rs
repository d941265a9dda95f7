//! `vmpod pull IMAGE`, also what `vmpod run` does for an image the store lacks: the pull
//! itself is `vmpod_sandbox::image::pull`; here is its progress, one line per layer as docker
//! draws it, on a terminal only.

use crate::{chain, Failure};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmpod_sandbox::image::pull::{self, LayerEvent, PullError, PullOptions};
use vmpod_sandbox::image::{Image, Store};

/// docker's status for a pull stopped by Ctrl-C: 128 + SIGINT.
const EXIT_INTERRUPTED: i32 = 130;

/// Redraws at most this often while bytes arrive.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// One line per layer, redrawn in place: the cursor goes back up over the lines drawn before.
struct Board {
    lines: Vec<(String, String)>,
    drawn: usize,
    last: Option<Instant>,
}

impl Board {
    fn update(&mut self, index: usize, digest: &str, event: LayerEvent) {
        let short: String = digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
        let status = match event {
            LayerEvent::Cached => "Already exists".to_string(),
            LayerEvent::Waiting => "Waiting".to_string(),
            LayerEvent::Downloading { done, total } => format!(
                "Downloading {:.1}/{:.1} MB",
                done as f64 / 1e6,
                total as f64 / 1e6
            ),
            LayerEvent::Extracting => "Extracting".to_string(),
            LayerEvent::Done => "Pull complete".to_string(),
        };
        if self.lines.len() <= index {
            self.lines.resize(index + 1, (String::new(), String::new()));
        }
        self.lines[index] = (short, status);
        let downloading = matches!(event, LayerEvent::Downloading { .. });
        if downloading && self.last.is_some_and(|t| t.elapsed() < REDRAW_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        self.draw();
    }

    fn draw(&mut self) {
        let mut out = String::new();
        if self.drawn > 0 {
            out += &format!("\x1b[{}A", self.drawn);
        }
        for (digest, status) in &self.lines {
            out += &format!("\r\x1b[2K{digest}: {status}\n");
        }
        self.drawn = self.lines.len();
        let _ = std::io::stderr().write_all(out.as_bytes());
    }
}

/// Pulls `reference` into the host's store, drawing progress when stderr is a terminal.
pub fn pull(reference: &str) -> Result<Image, Failure> {
    let store = Store::open().map_err(|e| Failure::runtime(chain(&e)))?;
    let options = PullOptions::from_host().map_err(|e| Failure::runtime(chain(&e)))?;
    let board = Arc::new(Mutex::new(Board {
        lines: Vec::new(),
        drawn: 0,
        last: None,
    }));
    let progress: Arc<pull::Progress> = if std::io::stderr().is_terminal() {
        let board = board.clone();
        Arc::new(move |index, digest: &str, event| {
            if let Ok(mut board) = board.lock() {
                board.update(index, digest, event);
            }
        })
    } else {
        Arc::new(|_, _: &str, _| {})
    };
    let pulled = pull::pull(&store, reference, &options, progress);
    if let Ok(mut board) = board.lock() {
        if board.drawn > 0 {
            board.draw();
        }
    }
    pulled.map_err(|e| {
        let code = match e {
            PullError::Interrupted => EXIT_INTERRUPTED,
            _ => crate::EXIT_RUNTIME,
        };
        // A registry's error list may span lines; the reason stays one line.
        let reason = chain(&e).replace('\n', "; ");
        Failure(code, format!("pull {reference}: {reason}"))
    })
}

/// `vmpod pull IMAGE`: the image's name and ID, as docker prints them.
pub fn run(reference: &str) -> Result<i32, Failure> {
    let started = Instant::now();
    let image = pull(reference)?;
    eprintln!(
        "vmpod: pulled {} ({} layers) in {:.1} s",
        image.name,
        image.layers.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{}", image.id);
    Ok(0)
}
