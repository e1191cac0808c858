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
            await WriteHintAsync(ex);
            return 1;
        }
        catch (OperationCanceledException ex)
        {
            // One line, then the shell's status for the signal (130 for SIGINT, 143 for SIGTERM).
            await Console.Error.WriteLineAsync($"blockmirror {command}: {(ex is InterruptedException ? ex.Message : Interrupts.Word)}");
            return Interrupts.ExitCode;
        }
    }

    /// <summary>
    /// For the image tools (<c>create</c>, <c>info</c>, <c>map</c>, <c>check</c>, <c>compare</c>, <c>resize</c>),
    /// which read images anyone may hand them: every failure, also an unexpected one from a damaged image,
    /// ends as one line on stderr and <paramref name="errorExitCode"/> (qemu-img's code for the command), never
    /// as a stack trace. A <see cref="ToolExitException"/> brings its own code.
    /// </summary>
    public static async Task<int> RunToolAsync(string command, int errorExitCode, Func<Task<int>> body)
    {
        try
        {
            return await body();
        }
        catch (ToolExitException ex)
        {
            return await FailAsync(command, ex.Message, ex.ExitCode);
        }
        catch (Exception ex) when (ex is BlockOpenException or BlockIOException or BlockGraphException
            or FormatException or ArgumentException or UsageException or IOException or UnauthorizedAccessException)
        {
            var code = await FailAsync(command, ex.Message, errorExitCode);
            await WriteHintAsync(ex);
            return code;
        }
        catch (OperationCanceledException)
        {
            return await FailAsync(command, Interrupts.Word, Interrupts.ExitCode);
        }
        catch (Exception ex)
        {
            // A bug, most likely in how a damaged image is read: say so plainly, still in one line.
            return await FailAsync(command, $"internal error: {ex.GetType().Name}: {ex.Message}", errorExitCode);
        }
    }

    /// <summary>The second line qemu-img prints under some errors, e.g. who may hold an image's lock.</summary>
    static async Task WriteHintAsync(Exception ex)
    {
        var hint = (ex as BlockGraphException ?? ex.InnerException as BlockGraphException)?.Hint
            ?? (ex as BlockOpenException ?? ex.InnerException as BlockOpenException)?.Hint;
        if (hint is not null)
        {
            await Console.Error.WriteLineAsync(hint);
        }
    }

    /// <summary>Prints <c>blockmirror COMMAND: message</c> on stderr (after what stdout already holds) and returns <paramref name="exitCode"/>.</summary>
    public static async Task<int> FailAsync(string command, string message, int exitCode)
    {
        Console.Out.Flush();
        await Console.Error.WriteLineAsync($"blockmirror {command}: {message.ReplaceLineEndings(" ")}");
        return exitCode;
    }
}

/// <summary>A command line that parses but asks for something impossible (<paramref name="inner"/>: the error it comes from, which may carry a hint).</summary>
sealed class UsageException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>An interrupt (exit status 130) with more to say than "interrupted", e.g. what it left behind.</summary>
sealed class InterruptedException(string message) : OperationCanceledException(message);

/// <summary>A failure with its own exit status (qemu-img's, e.g. 63 for a format without checks).</summary>
sealed class ToolExitException(string message, int exitCode) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}
