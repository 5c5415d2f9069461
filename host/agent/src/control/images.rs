//! `locus image …`: import a file's bytes into the agent's image store,
//! list, show and remove images, fetch one from the agents that hold it
//! and follow transfers.

use super::{Connection, clean, clean_table, print_json, runtime};
use crate::images::ImageInfo;
use crate::images::transfer::wire::Inventory;
use crate::images::transfer::{Stage, Transfer, Transfers};
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
    List {
        /// Every image of the agents this one is connected to: where each
        /// is, and how complete.
        #[arg(long)]
        cluster: bool,
    },
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
    /// Fetch an image from the agents of the cluster that hold it (chunks
    /// from many holders at once, each checked), showing its progress.
    Fetch {
        /// Name or hash (a name is resolved by the nearest agent holding
        /// an image of that name).
        image: String,
        /// Fetch only from this agent (peer id).
        #[arg(long)]
        from: Option<String>,
        /// Start it and return.
        #[arg(long)]
        no_wait: bool,
    },
    /// Warm a PoP ahead of time: every agent of PoP `--pop` fetches the
    /// image from its holders.
    Prefetch {
        /// Name or hash.
        image: String,
        /// The PoP.
        #[arg(long)]
        pop: String,
    },
    /// This agent's fetches and what it uploaded to peers.
    Transfers,
}

/// Runs a `locus image` verb.
pub fn run(conn: &Connection, cmd: ImageCommand) -> Result<()> {
    let client = conn.client()?;
    runtime()?.block_on(async {
        let info: ImageInfo = match cmd {
            ImageCommand::List { cluster: true } => {
                let all: Vec<Inventory> = client.get("/v1/cluster/images").await?;
                return if conn.json { print_json(&all) } else { print_cluster(&all) };
            }
            ImageCommand::List { cluster: false } => {
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
            ImageCommand::Show { image } => {
                match client.get(&format!("/v1/images/{}", segment(&image)?)).await {
                    Ok(info) => info,
                    // Not in the store yet: maybe on its way.
                    Err(e) => {
                        let t: Transfers = client.get("/v1/transfers").await?;
                        let Some(f) = t.fetches.into_iter().find(|f| {
                            f.stage != Stage::Done && (f.hash == image || f.name.as_deref() == Some(&image))
                        }) else {
                            return Err(e);
                        };
                        return if conn.json { print_json(&f) } else { print_transfer(&f) };
                    }
                }
            }
            ImageCommand::Fetch { image, from, no_wait } => {
                segment(&image)?;
                let body = serde_json::json!({ "image": image, "from": from });
                let answer: serde_json::Value = client.post("/v1/transfers", Some(&body)).await?;
                if answer.get("stage").is_none() {
                    let info: ImageInfo = serde_json::from_value(answer)?;
                    if conn.json {
                        return print_json(&info);
                    }
                    println!("{} is in this host's store already", image);
                    return Ok(());
                }
                let started: Transfer = serde_json::from_value(answer)?;
                let last = if no_wait { started } else { follow(&client, &started.hash, conn.json).await? };
                if conn.json {
                    return print_json(&last);
                }
                print_transfer(&last)?;
                if last.stage == Stage::Failed {
                    bail!("the fetch failed: {}", last.error.unwrap_or_default());
                }
                return Ok(());
            }
            ImageCommand::Prefetch { image, pop } => {
                segment(&image)?;
                let body = serde_json::json!({ "image": image, "pop": pop });
                let rows: Vec<crate::api::images::Prefetched> =
                    client.post("/v1/transfers", Some(&body)).await?;
                if conn.json {
                    return print_json(&rows);
                }
                if rows.is_empty() {
                    bail!("no agent of PoP {pop} answered");
                }
                for r in rows {
                    println!("  {}: {}", clean(&r.host), clean(&r.outcome));
                }
                println!("follow with `locus image list --cluster`");
                return Ok(());
            }
            ImageCommand::Transfers => {
                let t: Transfers = client.get("/v1/transfers").await?;
                return if conn.json { print_json(&t) } else { print_transfers(&t) };
            }
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

/// Follows the fetch of `hash` to its end, with a progress bar on a
/// terminal.
async fn follow(client: &crate::client::Client, hash: &str, quiet: bool) -> Result<Transfer> {
    let bar = (!quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    loop {
        let t: Transfers = client.get("/v1/transfers").await?;
        let Some(f) = t.fetches.into_iter().find(|f| f.hash == hash) else {
            bail!("the agent no longer reports the fetch of {hash}");
        };
        if let Some(bar) = &bar {
            bar.set_length(f.size_bytes);
            bar.set_position((f.have_chunks * crate::images::manifest::CHUNK_BYTES).min(f.size_bytes));
            bar.set_message(format!("{:?} from {} holders", f.stage, f.holders).to_lowercase());
        }
        if matches!(f.stage, Stage::Done | Stage::Failed) {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            return Ok(f);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// One row per image: its names, and every agent holding it, with how
/// much of it those still fetching hold.
fn print_cluster(all: &[Inventory]) -> Result<()> {
    let mut by_hash: std::collections::BTreeMap<&str, (Vec<&str>, u64, Vec<String>)> = Default::default();
    for agent in all {
        for held in &agent.images {
            let row = by_hash.entry(&held.hash).or_default();
            for n in &held.names {
                if !row.0.contains(&n.as_str()) {
                    row.0.push(n);
                }
            }
            row.1 = row.1.max(held.size_bytes);
            let share = if held.have_chunks >= held.chunks {
                String::new()
            } else {
                format!(" {}%", held.have_chunks * 100 / held.chunks.max(1))
            };
            row.2.push(format!("{} ({}){share}", agent.host, agent.pop));
        }
    }
    println!("{} agents answered", all.len());
    if by_hash.is_empty() {
        println!("no images");
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["NAME", "HASH", "SIZE", "HELD BY"]);
    for (hash, (names, size_bytes, holders)) in by_hash {
        t.add_row(vec![names.join(", "), short(hash), size(size_bytes), holders.join("\n")]);
    }
    println!("{}", clean_table(&t));
    Ok(())
}

fn print_transfer(f: &Transfer) -> Result<()> {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let sources: Vec<String> = f
        .sources
        .iter()
        .map(|s| {
            let corrupt = if s.corrupt > 0 { format!(", {} corrupt", s.corrupt) } else { String::new() };
            format!("{} ({} chunks, {} ms{corrupt})", s.peer, s.chunks, s.rtt_ms)
        })
        .collect();
    for (k, v) in [
        ("hash", f.hash.clone()),
        ("name", f.name.clone().unwrap_or_else(|| "-".into())),
        ("stage", format!("{:?}", f.stage).to_lowercase()),
        ("progress", format!("{} of {} chunks ({})", f.have_chunks, f.chunks, size(f.size_bytes))),
        ("holders", f.holders.to_string()),
        ("from", if sources.is_empty() { "-".into() } else { sources.join("\n") }),
        ("seconds", format!("{:.1}", f.elapsed_s)),
        ("error", f.error.clone().unwrap_or_else(|| "-".into())),
    ] {
        t.add_row(vec![k.to_owned(), clean(&v)]);
    }
    println!("{}", clean_table(&t));
    Ok(())
}

fn print_transfers(t: &Transfers) -> Result<()> {
    let limit =
        if t.upload_limit_mbit == 0 { "no limit".into() } else { format!("{} Mbit/s", t.upload_limit_mbit) };
    println!(
        "uploaded {} in {} chunks ({limit}; {} asks answered busy)",
        size(t.uploaded_bytes),
        t.uploaded_chunks,
        t.busy
    );
    if t.fetches.is_empty() {
        println!("no fetches");
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(vec!["IMAGE", "STAGE", "CHUNKS", "SIZE", "HOLDERS", "SECONDS", "ERROR"]);
    for f in &t.fetches {
        table.add_row(vec![
            f.name.clone().unwrap_or_else(|| short(&f.hash)),
            format!("{:?}", f.stage).to_lowercase(),
            format!("{}/{}", f.have_chunks, f.chunks),
            size(f.size_bytes),
            f.holders.to_string(),
            format!("{:.1}", f.elapsed_s),
            f.error.clone().unwrap_or_default(),
        ]);
    }
    println!("{}", clean_table(&table));
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
