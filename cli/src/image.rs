//! `vmpod image import|ls|rm` and `vmpod images`: the local image store.

use crate::{chain, Failure};
use std::path::PathBuf;
use vmpod_sandbox::image::{self, Store};

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Import an oci-archive or docker-archive tarball, or an OCI layout directory.
    Import {
        file: PathBuf,
        /// NAME[:TAG] to import it as (default: the name the archive gives).
        name: Option<String>,
    },
    /// List the images.
    #[command(alias = "list")]
    Ls,
    /// Remove images; layers no other image uses are deleted.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
}

fn store() -> Result<Store, Failure> {
    Store::open().map_err(|e| Failure::runtime(chain(&e)))
}

pub fn run(command: ImageCommand) -> Result<i32, Failure> {
    match command {
        ImageCommand::Import { file, name } => {
            let store = store()?;
            let started = std::time::Instant::now();
            let image = image::import(&store, &file, name.as_deref())
                .map_err(|e| Failure::runtime(format!("import: {}", chain(&e))))?;
            eprintln!(
                "vmpod: imported {} ({} layers) in {:.1} s",
                image.name,
                image.layers.len(),
                started.elapsed().as_secs_f64()
            );
            println!("{}", image.id);
            Ok(0)
        }
        ImageCommand::Ls => list(),
        ImageCommand::Rm { images } => {
            let store = store()?;
            let mut status = 0;
            for reference in images {
                match store.remove(&reference) {
                    Ok(image) => println!("Untagged: {}", image.name),
                    Err(e) => {
                        eprintln!("vmpod: image rm {reference}: {}", chain(&e));
                        status = crate::EXIT_RUNTIME;
                    }
                }
            }
            Ok(status)
        }
    }
}

pub fn list() -> Result<i32, Failure> {
    let store = store()?;
    let images = store.list().map_err(|e| Failure::runtime(chain(&e)))?;
    println!(
        "{:<40}  {:<12}  {:<12}  {:>10}",
        "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
    );
    for image in images {
        let (repo, tag) = match image.name.split_once('@') {
            Some((repo, _digest)) => (repo, "<none>"),
            None => image.name.rsplit_once(':').unwrap_or((&image.name, "")),
        };
        let id: String = image
            .id
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
        let size = store.size(&image) as f64 / (1 << 20) as f64;
        println!("{repo:<40}  {tag:<12}  {id:<12}  {size:>8.1}MB");
    }
    Ok(0)
}
