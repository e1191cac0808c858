using BlockMirror.Block.Drivers;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Jobs;

namespace BlockMirror.Cli.Commands;

/// <summary>Turns the errors users can cause into one clear line on stderr and exit status 1.</summary>
static class CliErrors
{
    public static async Task<int> RunAsync(string command, Func<Task<int>> body)
    {
        try
        {
            return await body();
        }
        catch (Exception ex) when (ex is BlockOpenException or BlockIOException or JobException or BlockGraphException
            or FormatException or ArgumentException or UsageException or IOException)
        {
            Console.Out.Flush();
            await Console.Error.WriteLineAsync($"blockmirror {command}: {ex.Message}");
            return 1;
        }
        catch (OperationCanceledException)
        {
            await Console.Error.WriteLineAsync($"blockmirror {command}: interrupted");
            return 130;
        }
    }
}

/// <summary>A command line that parses but asks for something impossible.</summary>
sealed class UsageException(string message) : Exception(message);
