//! `locus image …`: import a file's bytes into the agent's image store,
//! list, show and remove images.

use super::{Connection, clean, clean_table, print_json, runtime};
use crate::images::ImageInfo;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use std::path::PathBuf;

/// `locus image …`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Upload a qcow2 or raw disk image into the agent's store. The agent
    /// checks it (no backing or external data files) and keeps it read-only;
    /// VMs then name it with `--image NAME`.
    Import {
        /// The image file, read here and sent to the agent.
        file: PathBuf,
        /// The name VMs will use; the file's name without extension if absent.
        #[arg(long)]
        name: Option<String>,
    },
    /// The images in the agent's store.
    List,
    /// One image, by name or sha256:<hex>.
    Show {
        /// Name or hash.
        image: String,
    },
    /// Remove a name (a hash removes every name); the bytes go with the last
    /// name. Refused while a VM's disk is on it.
    Rm {
        /// Name or hash.
        image: String,
    },
}

/// Runs a `locus image` verb.
pub fn run(conn: &Connection, cmd: ImageCommand) -> Result<()> {
    let client = conn.client()?;
    runtime()?.block_on(async {
        let info: ImageInfo = match cmd {
            ImageCommand::List => {
                let images: Vec<ImageInfo> = client.get("/v1/images").await?;
                return if conn.json { print_json(&images) } else { print_list(&images) };
            }
            ImageCommand::Import { file, name } => {
                let name = match name {
                    Some(n) => n,
                    None => default_name(&file)?,
                };
                let opened = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("opening {}", file.display()))?;
                client.put_file(&format!("/v1/images/{}", segment(&name)?), opened).await?
            }
            ImageCommand::Show { image } => client.get(&format!("/v1/images/{}", segment(&image)?)).await?,
            ImageCommand::Rm { image } => {
                let info: ImageInfo = client.delete(&format!("/v1/images/{}", segment(&image)?)).await?;
                if conn.json {
                    return print_json(&info);
                }
                println!("removed {image}");
                return Ok(());
            }
        };
        if conn.json { print_json(&info) } else { print_one(&info) }
    })
}

/// `debian-12.qcow2` → `debian-12`.
fn default_name(file: &std::path::Path) -> Result<String> {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if locus_core::request::valid_name(stem) {
        Ok(stem.to_owned())
    } else {
        bail!("cannot make an image name from {}; give one with --name", file.display())
    }
}

fn segment(image: &str) -> Result<&str> {
    if locus_core::request::valid_image_ref(image) {
        Ok(image)
    } else {
        bail!("{image:?} is not an image name or sha256:<64 hex digits>")
    }
}

/// Bytes for a person: `1.5 GiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn short(hash: &str) -> String {
    hash.chars().take("sha256:".len() + 12).collect()
}

fn print_list(images: &[ImageInfo]) -> Result<()> {
    if images.is_empty() {
        println!("no images (import one with `locus image import FILE --name NAME`)");
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["NAME", "HASH", "FORMAT", "SIZE", "DISK", "USED BY"]);
    for i in images {
        t.add_row(vec![
            i.names.join(", "),
            short(&i.hash),
            i.format.as_str().to_owned(),
            size(i.size_bytes),
            size(i.virtual_size_bytes),
            i.used_by.join(", "),
        ]);
    }
    println!("{}", clean_table(&t));
    Ok(())
}

fn print_one(i: &ImageInfo) -> Result<()> {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    for (k, v) in [
        ("names", i.names.join(", ")),
        ("hash", i.hash.clone()),
        ("format", i.format.as_str().to_owned()),
        ("size", size(i.size_bytes)),
        ("disk size", size(i.virtual_size_bytes)),
        (
            "manifest",
            match &i.manifest {
                Some(id) => format!("{id} ({} chunks of 1 MiB)", i.chunks),
                None => "- (stored by an older agent)".into(),
            },
        ),
        ("used by", if i.used_by.is_empty() { "-".into() } else { i.used_by.join(", ") }),
    ] {
        t.add_row(vec![k.to_owned(), clean(&v)]);
    }
    println!("{}", clean_table(&t));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_default_names_read_well() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(default_name(std::path::Path::new("/x/debian-12.qcow2")).expect("name"), "debian-12");
        assert!(default_name(std::path::Path::new("/x/.qcow2")).is_err());
        assert!(segment("../x").is_err() && segment("debian").is_ok());
    }
}
