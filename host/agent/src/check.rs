//! `locus policy check FILE`: what a component is and whether this agent
//! would accept it.

use anyhow::Result;
use locus::source;
use locus_policy::{Runtime, RuntimeConfig};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A component file, or the name of a built-in policy.
    policy: String,
    /// Configuration given to the policy, `key=value` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let src = source::resolve(&args.policy, runtime.config().max_component_size)?;
    let config = source::config(&args.config)?;
    let loaded = match runtime.load(&src.bytes, &src.name, config) {
        Ok(l) => l,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "policy": src.name, "error": e.to_string() })
                );
            } else {
                println!("{}: refused: {e}", args.policy);
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let info = loaded.info();
    if args.json {
        println!("{}", serde_json::json!({ "ok": true, "policy": info }));
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: ok", args.policy);
    println!("  world         {}", info.world.as_str());
    println!("  id            {}", info.id());
    println!("  sha256        {}", info.hash);
    println!("  size          {} bytes", info.size);
    println!("  compile time  {:.1} ms", info.compile_time.as_secs_f64() * 1000.0);
    println!("  exports       {}", info.exports.join(", "));
    println!("  imports       {}", info.imports.join(", "));
    Ok(ExitCode::SUCCESS)
}
