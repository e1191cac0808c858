using System.Buffers.Binary;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers.Qcow2;

/// <summary>
/// qemu-img check for qcow2: counts the references to every host cluster, compares them with the stored
/// refcounts, and checks the copied flags; optionally repairs. Works on the file node directly, without a
/// qcow2 node, so that an image too damaged to open can still be checked. Nothing else may use the image
/// meanwhile.
/// </summary>
public static class Qcow2Check
{
    /// <summary>Checks, repairs what <paramref name="repair"/> allows, and (after a repair) checks again.</summary>
    /// <exception cref="Qcow2Exception">The header is unusable: the image cannot be checked at all.</exception>
    public static async Task<Qcow2CheckResult> CheckAsync(BlockNode file, Qcow2RepairMode repair, CancellationToken cancellationToken = default)
    {
        var name = file.Driver.FileName ?? file.Name;

        // As qemu-img orders it: refcounts first; copied flags only once the refcounts are what they will stay.
        var scan = await Qcow2CheckScan.RunAsync(file, name, checkCopied: repair == Qcow2RepairMode.None, cancellationToken).ConfigureAwait(false);
        if (repair == Qcow2RepairMode.None)
        {
            return Result(scan, 0, 0, scan.Messages);
        }

        var messages = new List<string>(scan.Messages);
        if (scan.NeedsRebuild && repair != Qcow2RepairMode.All)
        {
            messages.Add("ERROR need to rebuild refcount structures");
            return Result(scan, 0, 0, messages) with { Failed = true, CheckErrors = scan.CheckErrors + 1 };
        }

        if (scan.NeedsRebuild)
        {
            messages.Add("Rebuilding refcount structure");
            await RebuildAsync(file, scan, cancellationToken).ConfigureAwait(false);
        }
        else if (scan.Leaks > 0 || scan.Corruptions > 0)
        {
            await RepairInPlaceAsync(file, scan, repair, messages, cancellationToken).ConfigureAwait(false);
        }

        var copiedFixed = 0;
        if (repair == Qcow2RepairMode.All)
        {
            var again = await Qcow2CheckScan.RunAsync(file, name, checkCopied: true, cancellationToken).ConfigureAwait(false);
            if (again.CopiedFixes.Count > 0)
            {
                // qemu-img says what it does to each: "Repairing" where the check alone says "ERROR". It fixes an
                // L2 table as it meets it, so an L2 table that two L1 entries share is told of once, not per entry.
                var found = again.Messages.Where(m => m.StartsWith("ERROR OFLAG_COPIED", StringComparison.Ordinal)).ToList();
                var seen = new HashSet<(bool, long, int)>();
                for (var i = 0; i < again.CopiedFixes.Count; i++)
                {
                    var (l1, table, index, _) = again.CopiedFixes[i];
                    if (seen.Add((l1, table, index)))
                    {
                        messages.Add("Repairing" + found[i]["ERROR".Length..]);
                        copiedFixed++;
                    }
                }

                await FixCopiedFlagsAsync(file, again, cancellationToken).ConfigureAwait(false);
            }
        }

        var final = await Qcow2CheckScan.RunAsync(file, name, checkCopied: true, cancellationToken).ConfigureAwait(false);
        if (repair == Qcow2RepairMode.All && final.Corruptions == 0 &&
            (final.Header.IncompatibleFeatures & (Qcow2Header.IncompatibleCorrupt | Qcow2Header.IncompatibleDirty)) != 0)
        {
            // Consistent again: the corrupt and dirty marks no longer apply.
            var features = final.Header.IncompatibleFeatures & ~(Qcow2Header.IncompatibleCorrupt | Qcow2Header.IncompatibleDirty);
            await PatchHeaderAsync(file, block => BinaryPrimitives.WriteUInt64BigEndian(block[72..], features), cancellationToken).ConfigureAwait(false);
        }

        return Result(final, Math.Max(0, scan.Corruptions + copiedFixed - final.Corruptions), Math.Max(0, scan.Leaks - final.Leaks), messages);
    }

    /// <summary>
    /// Repairs an image another writer left dirty (lazy refcounts, not closed), before it is opened for
    /// writing. Fails when inconsistencies remain that no refcount repair can fix.
    /// </summary>
    internal static async Task RepairDirtyAsync(BlockNode file, string name, CancellationToken cancellationToken)
    {
        var result = await CheckAsync(file, Qcow2RepairMode.All, cancellationToken).ConfigureAwait(false);
        if (result.Corruptions > 0)
        {
            // QEMU's words: the refcount repair could not make the image consistent.
            throw new Qcow2Exception(name, "Could not repair dirty image: Input/output error", BlockErrno.EIO);
        }
    }

    static Qcow2CheckResult Result(Qcow2CheckScan scan, long corruptionsFixed, long leaksFixed, IReadOnlyList<string> messages) => new()
    {
        Corruptions = scan.Corruptions,
        Leaks = scan.Leaks,
        CheckErrors = scan.CheckErrors,
        CorruptionsFixed = corruptionsFixed,
        LeaksFixed = leaksFixed,
        ImageEndOffset = (scan.HighestUsed + 1) << scan.Geometry.ClusterBits,
        TotalClusters = scan.Geometry.ClustersFor(scan.Header.Size),
        AllocatedClusters = scan.Allocated,
        FragmentedClusters = scan.Fragmented,
        CompressedClusters = scan.Compressed,
        Messages = messages,
        Warnings = [.. Qcow2BitmapDirectory.StaleWarnings(scan.Header)],
    };

    /// <summary>Sets mismatched refcounts to the references, in the blocks that hold them.</summary>
    static async Task RepairInPlaceAsync(BlockNode file, Qcow2CheckScan scan, Qcow2RepairMode repair, List<string> messages, CancellationToken cancellationToken)
    {
        var g = scan.Geometry;
        var changed = new SortedSet<long>();
        foreach (var (cluster, stored, referenced) in scan.Mismatches)
        {
            if (stored < referenced && repair != Qcow2RepairMode.All)
            {
                continue;
            }

            if (!scan.Refblocks.TryGetValue(cluster >> g.RefblockBits, out var block))
            {
                continue;
            }

            if (referenced > g.MaxRefcount)
            {
                throw new IOException($"qcow2 image '{scan.Name}': cluster {cluster} has {referenced} references, more than a {g.RefcountBits}-bit refcount holds");
            }

            messages.Add($"Repairing cluster {cluster} refcount={stored} reference={referenced}");
            Qcow2Image.WriteRefcount(block, cluster & (g.RefblockEntries - 1), g.RefcountOrder, referenced);
            changed.Add(cluster >> g.RefblockBits);
        }

        foreach (var index in changed)
        {
            await file.WriteAsync(Qcow2Entries.HostOffset(scan.Reftable[index]), scan.Refblocks[index], RequestFlags.None, cancellationToken).ConfigureAwait(false);
        }

        await file.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes a new refcount table and blocks after everything else in the file, holding the counted
    /// references, and then points the header at them. Until the header changes the old structure stays
    /// valid, so an interrupted rebuild loses nothing; afterwards the old one is free space.
    /// </summary>
    static async Task RebuildAsync(BlockNode file, Qcow2CheckScan scan, CancellationToken cancellationToken)
    {
        var g = scan.Geometry;
        var counts = scan.ReferencesWithoutRefcountStructure();
        var area = Math.Max(scan.FileClusters, scan.HighestReferenced + 1);
        long blocks = 0, tables = 1;
        while (true)
        {
            var total = area + blocks + tables;
            var neededBlocks = (total + g.RefblockEntries - 1) / g.RefblockEntries;
            var neededTables = Math.Max(1, (neededBlocks * 8 + g.ClusterSize - 1) / g.ClusterSize);
            if (neededBlocks == blocks && neededTables == tables)
            {
                break;
            }

            blocks = neededBlocks;
            tables = neededTables;
        }

        if (tables << g.ClusterBits > Qcow2Header.MaxRefcountTableBytes)
        {
            throw new IOException($"qcow2 image '{scan.Name}': a rebuilt refcount table would exceed {Qcow2Header.MaxRefcountTableBytes >> 20} MiB");
        }

        var blockBytes = new byte[blocks << g.ClusterBits];
        for (var c = 0L; c < area + blocks + tables; c++)
        {
            ulong value = c >= area ? 1 : c < counts.Length ? counts[c] : 0;
            if (value > g.MaxRefcount)
            {
                throw new IOException($"qcow2 image '{scan.Name}': cluster {c} has {value} references, more than a {g.RefcountBits}-bit refcount holds");
            }

            if (value != 0)
            {
                Qcow2Image.WriteRefcount(blockBytes.AsSpan((int)((c >> g.RefblockBits) << g.ClusterBits), g.ClusterSize), c & (g.RefblockEntries - 1), g.RefcountOrder, value);
            }
        }

        var tableBytes = new byte[tables << g.ClusterBits];
        for (var b = 0L; b < blocks; b++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(tableBytes.AsSpan((int)(b * 8)), (ulong)((area + b) << g.ClusterBits));
        }

        var end = (area + blocks + tables) << g.ClusterBits;
        if (file.Length < end)
        {
            var alignment = Math.Max(1, file.Limits.RequestAlignment);
            await file.TruncateAsync((end + alignment - 1) / alignment * alignment, cancellationToken).ConfigureAwait(false);
        }

        await file.WriteAsync(area << g.ClusterBits, blockBytes, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        var tableOffset = (area + blocks) << g.ClusterBits;
        await file.WriteAsync(tableOffset, tableBytes, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        await file.FlushAsync(cancellationToken).ConfigureAwait(false);
        await PatchHeaderAsync(file, header =>
        {
            BinaryPrimitives.WriteUInt64BigEndian(header[48..], (ulong)tableOffset);
            BinaryPrimitives.WriteUInt32BigEndian(header[56..], (uint)tables);
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Sets bit 63 of active L1 and L2 entries from the refcounts.</summary>
    static async Task FixCopiedFlagsAsync(BlockNode file, Qcow2CheckScan scan, CancellationToken cancellationToken)
    {
        var g = scan.Geometry;
        var l1Changed = false;
        foreach (var fix in scan.CopiedFixes.Where(f => f.L1))
        {
            scan.L1[fix.Index] = fix.Entry;
            l1Changed = true;
        }

        if (l1Changed)
        {
            // The whole clusters of the table (as far as the file goes), so the write suits O_DIRECT too.
            var offset = scan.Header.L1TableOffset;
            var bytes = new byte[Math.Min(g.ClustersFor((long)scan.L1.Length * 8) << g.ClusterBits, file.Length - offset)];
            await file.ReadAsync(offset, bytes, cancellationToken).ConfigureAwait(false);
            for (var i = 0; i < scan.L1.Length; i++)
            {
                BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(i * 8), scan.L1[i]);
            }

            await file.WriteAsync(offset, bytes, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        }

        foreach (var table in scan.CopiedFixes.Where(f => !f.L1).GroupBy(f => f.Table))
        {
            var bytes = new byte[Math.Min(g.ClusterSize, file.Length - table.Key)];
            await file.ReadAsync(table.Key, bytes, cancellationToken).ConfigureAwait(false);
            foreach (var fix in table)
            {
                BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(fix.Index * g.L2EntrySize), fix.Entry);
            }

            await file.WriteAsync(table.Key, bytes, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        }

        await file.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Changes header fields in place (one write of the block that holds them) and flushes.</summary>
    static async Task PatchHeaderAsync(BlockNode file, SpanAction patch, CancellationToken cancellationToken)
    {
        var length = (int)Math.Min(file.Length, Math.Max(512, file.Limits.RequestAlignment));
        var block = new byte[length];
        await file.ReadAsync(0, block, cancellationToken).ConfigureAwait(false);
        patch(block);
        await file.WriteAsync(0, block, RequestFlags.None, cancellationToken).ConfigureAwait(false);
        await file.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    delegate void SpanAction(Span<byte> block);
}

/// <summary>
/// The check could not run to its end (qemu-img's "Check failed: REASON"): <see cref="Exception.Message"/> is
/// what qemu-img reports first (e.g. "ERROR snapshot table too large"; empty where it reports nothing first),
/// <see cref="Errno"/> the reason.
/// Nothing was written.
/// </summary>
public sealed class Qcow2CheckFailedException(string message, BlockErrno errno) : IOException(message)
{
    public BlockErrno Errno { get; } = errno;
}
