using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.CrashWriter;

/// <summary>What one step of the crash writer does.</summary>
public enum CrashOpKind
{
    Write,
    WriteZeroes,
    Discard,
    Flush,
}

/// <summary>One step: a write fills its range with <see cref="Pattern"/>.</summary>
public readonly record struct CrashOp(int Index, CrashOpKind Kind, long Offset, int Length, byte Pattern);

/// <summary>
/// The writer's steps, the same for the same seed: the writer runs them and the test replays them on a
/// byte array to know what the image must hold.
/// </summary>
public static class CrashOps
{
    public static IEnumerable<CrashOp> Generate(int seed, long size)
    {
        var random = new Random(seed);
        for (var i = 0; ; i++)
        {
            var roll = random.Next(100);
            var length = (int)Math.Min(size, 512L * random.Next(1, 129));
            var offset = random.NextInt64(0, (size - length) / 512 + 1) * 512;
            var kind = roll switch
            {
                < 70 => CrashOpKind.Write,
                < 80 => CrashOpKind.WriteZeroes,
                < 88 => CrashOpKind.Discard,
                _ => CrashOpKind.Flush,
            };
            yield return new CrashOp(i, kind, offset, length, (byte)(i % 251 + 1));
        }
    }

    /// <summary>Runs a step on the disk: a write fills <paramref name="buffer"/> (at least 64 KiB) with its pattern; every other write-zeroes may unmap.</summary>
    public static async Task RunAsync(NodeEdge disk, CrashOp op, byte[] buffer)
    {
        switch (op.Kind)
        {
            case CrashOpKind.Write:
                buffer.AsSpan(0, op.Length).Fill(op.Pattern);
                await disk.WriteAsync(op.Offset, buffer.AsMemory(0, op.Length));
                break;
            case CrashOpKind.WriteZeroes:
                await disk.WriteZeroesAsync(op.Offset, op.Length, op.Index % 2 == 0 ? RequestFlags.MayUnmap : RequestFlags.None);
                break;
            case CrashOpKind.Discard:
                await disk.DiscardAsync(op.Offset, op.Length);
                break;
            case CrashOpKind.Flush:
                await disk.FlushAsync();
                break;
        }
    }

    /// <summary>Applies a step to a model of the guest bytes (discard: whole clusters read as zeroes afterwards, version 3).</summary>
    public static void Apply(CrashOp op, byte[] model, int clusterSize)
    {
        switch (op.Kind)
        {
            case CrashOpKind.Write:
                model.AsSpan((int)op.Offset, op.Length).Fill(op.Pattern);
                break;
            case CrashOpKind.WriteZeroes:
                model.AsSpan((int)op.Offset, op.Length).Clear();
                break;
            case CrashOpKind.Discard:
                var (start, end) = DiscardedRange(op, model.Length, clusterSize);
                if (end > start)
                {
                    model.AsSpan((int)start, (int)(end - start)).Clear();
                }

                break;
        }
    }

    /// <summary>The bytes a step may change.</summary>
    public static (long Start, long End) Touched(CrashOp op, long size, int clusterSize) =>
        op.Kind switch
        {
            CrashOpKind.Flush => (0, 0),
            CrashOpKind.Discard => DiscardedRange(op, size, clusterSize),
            _ => (op.Offset, op.Offset + op.Length),
        };

    static (long Start, long End) DiscardedRange(CrashOp op, long size, int clusterSize)
    {
        var start = (op.Offset + clusterSize - 1) / clusterSize * clusterSize;
        var end = op.Offset + op.Length == size ? size : (op.Offset + op.Length) / clusterSize * clusterSize;
        return (start, Math.Max(start, end));
    }
}
