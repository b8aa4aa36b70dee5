//! `splitvisor run --config FILE`: a system description of several VMs in
//! TOML (like Hubris's `app.toml`), one `[[vm]]` table per VM:
//!
//! ```toml
//! [[vm]]
//! guest = "hello"      # required: as --guest (a built-in guest or a path)
//! mmu = "shadow"       # as --mmu: npt (default), shadow, baseline
//! ram = 16             # as --ram, MiB
//! board = "isa"        # as --board
//! append = "..."       # as --append
//! uart_server = true   # as --uart-server
//! cpu = 1              # the host CPU it runs on (0 by default; `run --cpus`)
//! ```
//!
//! Each table becomes the command-line options of one VM, so a VM means
//! the same as `run` with those options; an unknown key is an error. A
//! top-level `net = "switch"` (or `"user[,RULE...]"`, as `--net`) joins
//! the VMs' virtio-net servers to one switch in no VM.

use serde::Deserialize;

/// Most VMs in one image (the stub's `MAX_VMS`).
pub const MAX_VMS: usize = ipc_proto::manifest::MAX_VMS;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    vm: Vec<VmConfig>,
    net: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmConfig {
    guest: String,
    mmu: Option<String>,
    ram: Option<u32>,
    board: Option<String>,
    append: Option<String>,
    #[serde(default)]
    uart_server: bool,
    /// The host CPU it runs on (`run --cpus`).
    cpu: Option<u8>,
}

/// The options of each VM described in `text` (a config file's content).
pub fn config_args(text: &str) -> Result<Vec<Vec<String>>, String> {
    let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
    if config.vm.is_empty() || config.vm.len() > MAX_VMS {
        return Err(format!(
            "{} [[vm]] tables; an image holds 1 to {MAX_VMS} VMs",
            config.vm.len()
        ));
    }
    Ok(config
        .vm
        .into_iter()
        .map(|vm| {
            let mut args = vec!["--guest".to_string(), vm.guest];
            let mut opt = |name: &str, value: Option<String>| {
                if let Some(v) = value {
                    args.extend([format!("--{name}"), v]);
                }
            };
            opt("mmu", vm.mmu);
            opt("ram", vm.ram.map(|r| r.to_string()));
            opt("board", vm.board);
            opt("append", vm.append);
            opt("vm-cpu", vm.cpu.map(|c| c.to_string()));
            if vm.uart_server {
                args.push("--uart-server".into());
            }
            args
        })
        .collect())
}

/// The network of the VMs described in `text`: its `net` key (as `--net`).
pub fn config_net(text: &str) -> Result<Option<String>, String> {
    let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(config.net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vm_table_becomes_its_options() {
        let text =
            "[[vm]]\nguest = \"hello\"\n\n[[vm]]\nguest = \"timer\"\nmmu = \"shadow\"\nram = 8\n";
        assert_eq!(
            config_args(text).unwrap(),
            vec![
                vec!["--guest", "hello"],
                vec!["--guest", "timer", "--mmu", "shadow", "--ram", "8"],
            ]
        );
    }

    #[test]
    fn the_net_key_is_the_images_network() {
        let text = "net = \"switch\"\n[[vm]]\nguest = \"hello\"\n[[vm]]\nguest = \"hello\"\n";
        assert_eq!(config_net(text).unwrap().as_deref(), Some("switch"));
        assert_eq!(config_args(text).unwrap().len(), 2);
        assert_eq!(config_net("[[vm]]\nguest = \"hello\"\n").unwrap(), None);
    }

    #[test]
    fn unknown_keys_and_vm_counts_are_refused() {
        let e = config_args("[[vm]]\nguest = \"hello\"\ncpus = 2\n").unwrap_err();
        assert_eq!(
            config_args("[[vm]]\nguest = \"hello\"\ncpu = 1\n").unwrap(),
            vec![vec!["--guest", "hello", "--vm-cpu", "1"]]
        );
        assert!(e.contains("unknown field `cpus`"), "{e}");
        let e = config_args("[[vm]]\nmmu = \"npt\"\n").unwrap_err();
        assert!(e.contains("missing field `guest`"), "{e}");
        assert!(config_args("").unwrap_err().contains("missing field `vm`"));
        let five = "[[vm]]\nguest = \"hello\"\n".repeat(5);
        assert!(config_args(&five).unwrap_err().contains("1 to 4 VMs"));
    }
}
