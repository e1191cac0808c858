using System.Buffers;
using System.CommandLine;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Cli.Tools;

namespace BlockMirror.Cli.Commands;

/// <summary>
/// <c>blockmirror compare [-f FMT] [-F FMT] [-s] [-q] A B</c>: qemu-img compare. Exit 0 when the two
/// images read the same ("Images are identical."), 1 at the first difference ("Content mismatch at offset
/// N!", N the start of the first differing 512-byte sector), 2 when an image cannot be opened, 3 when block
/// status fails, 4 when a read fails. Images of different sizes are the same when the longer one reads as
/// zeroes past the shorter one's end (a warning says so), unless <c>-s</c> asks for the same size and the
/// same allocation.
/// </summary>
/// <remarks>
/// Ranges both chains report as zeroes are skipped without reading; the rest is read in chunks of at most
/// 2 MiB (qemu-img's IO_BUF_SIZE) into two pooled buffers, so memory stays bounded whatever the size.
/// </remarks>
static class CompareCommand
{
    /// <summary>qemu-img compare's IO_BUF_SIZE.</summary>
    const int ChunkSize = 2 << 20;

    const int Sector = 512;

    const int ExitDifferent = 1;
    const int ExitOpen = 2;
    const int ExitBlockStatus = 3;
    const int ExitRead = 4;

    public static Command Create()
    {
        var first = new Argument<string>("A") { Description = "First image" };
        var second = new Argument<string>("B") { Description = "Second image" };
        var format = new Option<string?>("--format", "-f") { Description = "Format of A (default: probed from the content)" };
        var secondFormat = new Option<string?>("--second-format", "-F") { Description = "Format of B (default: probed from the content)" };
        var strict = new Option<bool>("--strict", "-s") { Description = "Strict: the sizes and the allocation must match too" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Print nothing (the exit code tells)" };
        var forceShare = ImageTool.ForceShareOption();
        var command = new Command("compare", "Tell whether two images have the same content (qemu-img compare)")
        {
            first, second, format, secondFormat, strict, quiet, forceShare,
        };
        command.SetAction((parse, cancellationToken) => CliErrors.RunToolAsync("compare", ExitOpen, () =>
            RunAsync(parse.GetValue(first)!, parse.GetValue(format), parse.GetValue(second)!, parse.GetValue(secondFormat),
                parse.GetValue(strict), parse.GetValue(quiet), parse.GetValue(forceShare), cancellationToken)));
        return command;
    }

    sealed record Side(string Name, BlockNode Node, byte[] Buffer);

    static async Task<int> RunAsync(string pathA, string? formatA, string pathB, string? formatB, bool strict, bool quiet, bool forceShare,
        CancellationToken cancellationToken)
    {
        await using var graph = new BlockGraph();
        var nodeA = await ImageTool.OpenAsync(graph, pathA, formatA, readOnly: true, withBacking: true, cancellationToken, forceShare);
        ImageTool.PrintWarnings("compare", nodeA);
        var nodeB = await ImageTool.OpenAsync(graph, pathB, formatB, readOnly: true, withBacking: true, cancellationToken, forceShare);
        ImageTool.PrintWarnings("compare", nodeB);

        var bufferA = ArrayPool<byte>.Shared.Rent(ChunkSize);
        var bufferB = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            var a = new Side(pathA, nodeA, bufferA);
            var b = new Side(pathB, nodeB, bufferB);
            var difference = await CompareAsync(a, b, strict, quiet, cancellationToken);
            if (difference is { } message)
            {
                Say(quiet, message);
                return ExitDifferent;
            }

            Say(quiet, "Images are identical.");
            return 0;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(bufferA);
            ArrayPool<byte>.Shared.Return(bufferB);
        }
    }

    static void Say(bool quiet, string line)
    {
        if (!quiet)
        {
            Console.WriteLine(line);
        }
    }

    /// <summary>qemu-img's img_compare loop; returns the message for the first difference, or null.</summary>
    static async Task<string?> CompareAsync(Side a, Side b, bool strict, bool quiet, CancellationToken cancellationToken)
    {
        var sizeA = a.Node.Length;
        var sizeB = b.Node.Length;
        if (strict && sizeA != sizeB)
        {
            return "Strict mode: Image size mismatch!";
        }

        var common = Math.Min(sizeA, sizeB);
        var offset = 0L;
        while (offset < common)
        {
            var statusA = await StatusAsync(a, offset, sizeA - offset, cancellationToken);
            var statusB = await StatusAsync(b, offset, sizeB - offset, cancellationToken);
            var chunk = Math.Min(statusA.Length, statusB.Length);
            if (strict && Comparable(statusA, offset, sizeA) != Comparable(statusB, offset, sizeB))
            {
                return $"Strict mode: Offset {offset} block status mismatch!";
            }

            if (statusA.IsZero && statusB.IsZero)
            {
                // Both read zeroes here: nothing to read.
            }
            else if (statusA.IsAllocated == statusB.IsAllocated)
            {
                if (statusA.IsAllocated)
                {
                    var length = (int)Math.Min(chunk, ChunkSize);
                    await ReadAsync(a, offset, length, cancellationToken);
                    await ReadAsync(b, offset, length, cancellationToken);
                    var same = a.Buffer.AsSpan(0, length).CommonPrefixLength(b.Buffer.AsSpan(0, length));
                    if (same < length)
                    {
                        return $"Content mismatch at offset {offset + (same / Sector * Sector)}!";
                    }

                    chunk = length;
                }
            }
            else
            {
                // One side decides the content, the other defers to nothing below it (reads zeroes).
                chunk = Math.Min(chunk, ChunkSize);
                if (await FirstNonZeroAsync(statusA.IsAllocated ? a : b, offset, (int)chunk, cancellationToken) is { } nonZero)
                {
                    return $"Content mismatch at offset {nonZero}!";
                }
            }

            offset += chunk;
        }

        if (sizeA != sizeB)
        {
            Say(quiet, "Warning: Image size mismatch!");
            var over = sizeA > sizeB ? a : b;
            var end = Math.Max(sizeA, sizeB);
            while (offset < end)
            {
                var status = await StatusAsync(over, offset, end - offset, cancellationToken);
                var chunk = status.Length;
                if (status.IsAllocated && !status.IsZero)
                {
                    chunk = Math.Min(chunk, ChunkSize);
                    if (await FirstNonZeroAsync(over, offset, (int)chunk, cancellationToken) is { } nonZero)
                    {
                        return $"Content mismatch at offset {nonZero}!";
                    }
                }

                offset += chunk;
            }
        }

        return null;
    }

    /// <summary>
    /// What qemu-img's strict mode compares: bdrv_block_status_above's whole answer, which also carries
    /// BDRV_BLOCK_EOF when the run reaches the end of the image. So a run of zeroes to the end of one image
    /// differs from a run of zeroes that stops short of the end in the other, as it does for qemu-img.
    /// </summary>
    static (BlockStatusFlags Flags, bool Eof) Comparable(BlockStatus status, long offset, long size) =>
        (status.Flags & (BlockStatusFlags.Data | BlockStatusFlags.Zero | BlockStatusFlags.Allocated | BlockStatusFlags.OffsetValid),
            offset + status.Length == size);

    static async Task<BlockStatus> StatusAsync(Side side, long offset, long length, CancellationToken cancellationToken)
    {
        try
        {
            return await BlockChain.GetBlockStatusAboveAsync(side.Node, null, offset, length, cancellationToken);
        }
        catch (IOException e)
        {
            throw new ToolExitException($"Sector allocation test failed for {side.Name}: {e.Message}", ExitBlockStatus);
        }
    }

    static async Task ReadAsync(Side side, long offset, int length, CancellationToken cancellationToken)
    {
        try
        {
            await side.Node.ReadAsync(offset, side.Buffer.AsMemory(0, length), cancellationToken);
        }
        catch (IOException e)
        {
            // qemu-img's words end with strerror: the node and request our message would add name nothing the user gave.
            var why = e is BlockIOException failed ? failed.Errno.Describe() : e.Message;
            throw new ToolExitException($"Error while reading offset {offset} of {side.Name}: {why}", ExitRead);
        }
    }

    /// <summary>qemu-img's check_empty_sectors: the start of the first 512-byte sector holding a non-zero byte, or null.</summary>
    static async Task<long?> FirstNonZeroAsync(Side side, long offset, int length, CancellationToken cancellationToken)
    {
        await ReadAsync(side, offset, length, cancellationToken);
        var index = side.Buffer.AsSpan(0, length).IndexOfAnyExcept((byte)0);
        return index < 0 ? null : offset + (index / Sector * Sector);
    }
}
