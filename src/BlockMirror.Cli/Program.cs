using System.CommandLine;
using BlockMirror.Cli.Commands;

namespace BlockMirror.Cli;

/// <summary>The <c>blockmirror</c> command line: one subcommand per verb.</summary>
static class Program
{
    /// <summary>As many blocking file system calls as QEMU's thread pool runs at once (its max_worker_threads).</summary>
    const int IoThreads = 64;

    static async Task<int> Main(string[] args)
    {
        // File I/O on Linux is a blocking system call that .NET runs on a thread-pool thread. The pool
        // starts with one thread per core and adds more only after it sees them blocked for a while, so
        // 16 requests in flight ran on about 2 threads: the disk's queue stayed nearly empty (random 4 KiB
        // writes took 1.75x qemu-img bench's time). Let the pool grow to QEMU's 64 I/O workers at once;
        // threads are still created only when there is work queued for them. (File reads, writes and
        // flushes have since moved to the file driver's own threads, FileIoThreads; the minimum stays for
        // the blocking calls that still run on pool threads: fallocate, lseek, opening images.)
        ThreadPool.GetMinThreads(out var workers, out var completionPorts);
        ThreadPool.SetMinThreads(Math.Max(workers, IoThreads), completionPorts);
        // The NBD client driver lives above the block layer (beside the NBD server); every command opens nodes.
        BlockMirror.Nbd.Client.NbdDrivers.Register();
        var root = CreateRootCommand();
        try
        {
            return await CommandLineRules.InvokeAsync(root.Parse(args)).ConfigureAwait(false);
        }
        finally
        {
            // On success, on error and after SIGINT/SIGTERM (which the commands turn into a cancellation).
            Ui.TerminalState.Restore();
        }
    }

    /// <summary>The command tree: what is parsed, what <c>--help</c> prints, and what the man pages and completion say.</summary>
    internal static RootCommand CreateRootCommand()
    {
        var root = new RootCommand("BlockMirror: live disk-image mirroring (qemu-storage-daemon compatible)");
        root.Subcommands.Add(DemoCommand.Create());
        root.Subcommands.Add(MirrorCommand.Create());
        root.Subcommands.Add(CommitCommand.Create());
        root.Subcommands.Add(ServeCommand.Create());
        root.Subcommands.Add(BenchCommand.Create());
        root.Subcommands.Add(CreateCommand.Create());
        root.Subcommands.Add(ResizeCommand.Create());
        root.Subcommands.Add(InfoCommand.Create());
        root.Subcommands.Add(MapCommand.Create());
        root.Subcommands.Add(CheckCommand.Create());
        root.Subcommands.Add(CompareCommand.Create());
        CommandLineRules.AddVersionOption(root);
        root.Subcommands.Add(Docs.DocsCommand.Create(root));
        return root;
    }
}
