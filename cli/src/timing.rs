//! Where a run's time goes, printed on stderr when VMPOD_TIMING is set (the benchmark reads it).
//! Its own room so `run` and the monitor can both time a launch without importing each other.

pub struct Timing {
    start: std::time::Instant,
    marks: Vec<(&'static str, std::time::Instant)>,
}

impl Timing {
    pub fn new() -> Timing {
        Timing {
            start: std::time::Instant::now(),
            marks: Vec::new(),
        }
    }

    pub fn mark(&mut self, step: &'static str) {
        self.marks.push((step, std::time::Instant::now()));
    }

    pub fn report(&self) {
        if std::env::var_os("VMPOD_TIMING").is_none() {
            return;
        }
        let mut last = self.start;
        let steps: Vec<String> = self
            .marks
            .iter()
            .map(|(step, at)| {
                let ms = at.duration_since(last).as_secs_f64() * 1e3;
                last = *at;
                format!("{step}={ms:.1}")
            })
            .collect();
        eprintln!("vmpod: timing ms: {}", steps.join(" "));
    }
}
