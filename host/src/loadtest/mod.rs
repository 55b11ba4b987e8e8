//! The load generator (being written).

#[derive(clap::Args, Debug)]
pub struct LoadtestArgs {
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
}

pub async fn run(_args: LoadtestArgs) -> anyhow::Result<bool> {
    anyhow::bail!("loadtest is not built yet")
}
