//! Where serial output goes: stdout, a file, or nowhere.
//!
//! The UART hands us one byte per guest OUT; writing each through would cost a syscall per byte,
//! so output is line-buffered and flushed on newline, when the buffer fills, and on exit.

use std::fs::{File, OpenOptions};
use std::io::{self, LineWriter, Write};
use std::path::Path;

pub struct ConsoleOutput(Option<LineWriter<Box<dyn Write + Send>>>);

impl ConsoleOutput {
    pub fn stdout() -> ConsoleOutput {
        ConsoleOutput(Some(LineWriter::new(Box::new(io::stdout()))))
    }

    pub fn file(path: &Path) -> io::Result<ConsoleOutput> {
        let file: File =
            crate::config::open_file(path, OpenOptions::new().create(true).append(true))?;
        Ok(ConsoleOutput(Some(LineWriter::new(Box::new(file)))))
    }

    pub fn off() -> ConsoleOutput {
        ConsoleOutput(None)
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(out) => out.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}
