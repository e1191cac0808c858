using System.CommandLine;
using BlockMirror.Cli.Commands;

namespace BlockMirror.Cli;

/// <summary>The <c>blockmirror</c> command line: one subcommand per verb.</summary>
static class Program
{
    static async Task<int> Main(string[] args)
    {
        var root = new RootCommand("BlockMirror: live disk-image mirroring (qemu-storage-daemon compatible)");
        root.Subcommands.Add(DemoCommand.Create());
        root.Subcommands.Add(MirrorCommand.Create());
        return await root.Parse(args).InvokeAsync().ConfigureAwait(false);
    }
}
