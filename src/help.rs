//! The command's documentation beyond the flags: examples and the man-page sections that
//! `--help` shows (`after_help`), shell completions and man pages generated from it.
//!
//! The texts are attached by subcommand name when the command is built, so every subcommand
//! defined anywhere gets its examples here and a subcommand without any is left as it is.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Command, CommandFactory, FromArgMatches};

const ABOUT: &str = "\
WCFS mounts a web site on every node of a cluster as a FUSE union of a read-only branch (the \
site's code, served without touching the network) and one shared read-write branch (NFS: \
uploads, caches, sessions). An in-memory translation table says which paths live on the RW \
branch; it is replicated peer to peer over QUIC with mutual TLS, kept durable in each node's \
data directory, and can be rebuilt from the RW branch alone.";

const TOP: &str = "\
Examples:
  Try it on this machine (3 nodes on loopback; needs root and fuse3):
    wcfs demo
  Create the cluster CA once, then one certificate per node:
    wcfs ca init --out /etc/wcfs
    wcfs ca issue web1 --ca-dir /etc/wcfs --out /etc/wcfs
  Run a node:
    wcfs mount --ro /srv/site-ro --rw /mnt/nfs/site-rw --data /var/lib/wcfs \\
        --listen 10.0.0.1:7946 --seed 10.0.0.2:7946 \\
        --ca /etc/wcfs/ca.pem --cert /etc/wcfs/web1.pem --key /etc/wcfs/web1.key /var/www
  When every node's data directory is lost:
    wcfs rebuild --rw /mnt/nfs/site-rw --data /var/lib/wcfs

Files:
  DATA/identity     the node's replica id and generation (never copy it to another node)
  DATA/table.snap   the table's latest snapshot
  DATA/journal      every table change since that snapshot
  /etc/wcfs/        the config file, the CA certificate, the node's certificate and key

Environment:
  RUST_LOG   log filter (default: info), e.g. RUST_LOG=wcfs_gossip=debug. Logs go to stderr.

Exit status:
  0 on success, 1 on failure; `wcfs check` exits 1 when the table and the RW branch
  disagree and 2 when it cannot check.

See also: `wcfs help COMMAND`, `wcfs man`, and the Operations section of README.md
(systemd unit and mount.wcfs in dist/).";

const MOUNT: &str = "\
The mount runs in the foreground until SIGINT or SIGTERM, then unmounts, stops replicating and
writes a final snapshot. Another process using the same data directory is refused.

Examples:
  One node, table kept in /var/lib/wcfs:
    wcfs mount --ro /srv/site-ro --rw /mnt/nfs/site-rw --data /var/lib/wcfs /var/www
  A node of a cluster (every node lists some others as seeds):
    wcfs mount --ro /srv/site-ro --rw /mnt/nfs/site-rw --data /var/lib/wcfs \\
        --listen 10.0.0.1:7946 --seed 10.0.0.2:7946 --seed 10.0.0.3:7946 \\
        --ca /etc/wcfs/ca.pem --cert /etc/wcfs/web1.pem --key /etc/wcfs/web1.key /var/www";

const DEMO: &str = "\
Layout of the demo directory: ro/ (the generated site), rw/ (the shared RW branch), certs/,
nodeN/data, nodeN/mnt and nodeN.log per node.

Examples:
  wcfs demo
  wcfs demo --nodes 5 --dir /tmp/wcfs-demo     # keep the files afterwards
  wcfs demo --duration 10                      # stop by itself after 10 s";

const REBUILD: &str = "\
When to use it: only when no node has the table any more (every node's data directory lost).
A node whose own disk was lost while others run needs no rebuild: start it with an empty data
directory and it takes a snapshot from its peers.

With --force over an existing table the identity is kept and only the differences are
proposed (they reach the other nodes when this node next runs). Never give --force a copy of
another node's data directory: two nodes with one identity corrupt each other's tables.

Examples:
  wcfs rebuild --rw /mnt/nfs/site-rw --data /var/lib/wcfs
  wcfs check --rw /mnt/nfs/site-rw --data /var/lib/wcfs && systemctl start wcfs";

const CHECK: &str = "\
Differences the union itself leaves and that show the same files are not listed (an RW
directory the union created only to hold a change below it, entries below an opaque
directory).

Examples:
  wcfs check --rw /mnt/nfs/site-rw --data /var/lib/wcfs
  wcfs check --rw /mnt/nfs/site-rw --data /var/lib/wcfs | grep 'not in table'";

const CA: &str = "\
Keep ca.key off the web nodes: each node needs ca.pem, its own NAME.pem and NAME.key.

Examples:
  wcfs ca init --out /root/wcfs-ca
  wcfs ca issue web1 --ca-dir /root/wcfs-ca --out ./web1
  scp /root/wcfs-ca/ca.pem web1/web1.pem web1/web1.key web1:/etc/wcfs/";

const COMPLETIONS: &str = "\
Examples:
  wcfs completions bash > /etc/bash_completion.d/wcfs
  wcfs completions zsh > /usr/local/share/zsh/site-functions/_wcfs
  wcfs completions fish > ~/.config/fish/completions/wcfs.fish";

const MAN: &str = "\
Examples:
  wcfs man | man -l -
  wcfs man --out /usr/local/share/man/man1 && mandb";

/// `wcfs completions` options.
#[derive(clap::Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

/// `wcfs man` options.
#[derive(clap::Args, Debug)]
pub(crate) struct ManArgs {
    /// Write wcfs.1 and one page per subcommand (wcfs-mount.1, ...) into DIR instead of
    /// printing wcfs.1 to stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn decorate(c: Command) -> Command {
    let text = match c.get_name() {
        "mount" => Some(MOUNT),
        "demo" => Some(DEMO),
        "rebuild" => Some(REBUILD),
        "check" => Some(CHECK),
        "ca" | "init" | "issue" => Some(CA),
        "completions" => Some(COMPLETIONS),
        "man" => Some(MAN),
        _ => None,
    };
    let c = match text {
        Some(t) => c.after_long_help(t),
        None => c,
    };
    c.mut_subcommands(decorate)
}

/// The full command `C` with its documentation attached.
pub(crate) fn command<C: CommandFactory>() -> Command {
    C::command()
        .long_about(format!(
            "WCFS: a union filesystem for load-balanced web clusters.\n\n{ABOUT}"
        ))
        .after_long_help(TOP)
        .mut_subcommands(decorate)
}

/// Parses the process's arguments as `C`, with the documentation attached (exits on error
/// and for --help, like `Parser::parse`).
pub(crate) fn parse<C: CommandFactory + FromArgMatches>() -> C {
    let m = command::<C>().get_matches();
    C::from_arg_matches(&m).unwrap_or_else(|e| e.exit())
}

/// Prints the completion script for `args.shell`.
pub(crate) fn completions(args: CompletionsArgs, mut cmd: Command) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(args.shell, &mut cmd, name, &mut std::io::stdout());
}

/// Prints or writes the man pages.
pub(crate) fn man(args: ManArgs, cmd: Command) -> anyhow::Result<()> {
    let Some(dir) = args.out else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .context("writing the man page")?;
        return out.flush().context("writing the man page");
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut pages = vec![("wcfs".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        if sub.get_name() != "help" {
            pages.push((format!("wcfs-{}", sub.get_name()), sub.clone()));
        }
    }
    for (name, c) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c)
            .title(name.clone())
            .render(&mut buf)
            .context("rendering a man page")?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}
