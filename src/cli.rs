//! Command-line pieces shared by the commands that run a runtime
//! (`hale serve`, later): where the configuration and the data are.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::runtime::{Runtime, RuntimeConfig, RuntimeError};

/// `--config PATH` and `--data-dir DIR`, to `#[command(flatten)]` into a
/// subcommand.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ConfigArgs {
    /// The configuration file [default: ./hale.toml if it exists, else
    /// the built-in defaults].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The data directory, overriding the file's `data_dir` (relative to
    /// the current directory). The workspace moves with it unless
    /// `tools.workspace` is set.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    /// The file to read: `--config`, else `None` (`./hale.toml` if it
    /// exists).
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// Loads the configuration and applies `--data-dir`.
    ///
    /// # Errors
    /// [`ConfigError`] with the file, line and column.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let config = Config::load(self.config_path())?;
        Ok(match &self.data_dir {
            Some(dir) => config.with_data_dir(dir.clone()),
            None => config,
        })
    }

    /// The runtime these arguments describe ([`load`](Self::load), then
    /// [`RuntimeConfig::from_config`]).
    ///
    /// # Errors
    /// As [`load`](Self::load) and [`RuntimeConfig::from_config`].
    pub fn runtime_config(&self) -> Result<RuntimeConfig, ConfigError> {
        RuntimeConfig::from_config(&self.load()?)
    }

    /// Starts the runtime these arguments describe.
    ///
    /// # Errors
    /// As [`runtime_config`](Self::runtime_config), then as
    /// [`Runtime::start`].
    pub async fn start(&self) -> Result<Runtime, RuntimeError> {
        Runtime::start(self.runtime_config()?).await
    }
}
