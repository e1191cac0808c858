namespace BlockMirror.Jobs.Mirror;

/// <summary>What a mirror copies before tracking new writes (QMP's MirrorSyncMode, the modes we support).</summary>
public enum MirrorSyncMode
{
    /// <summary>Everything the source's whole chain holds.</summary>
    Full,

    /// <summary>Only what is allocated above the source's backing node; the target shares that base.</summary>
    Top,

    /// <summary>Nothing but writes made after the job started.</summary>
    None,

    /// <summary>
    /// What a named dirty bitmap of the source marks, onto a target that was in sync when the bitmap started
    /// (Proxmox's downstream <c>sync=bitmap</c>; QEMU 7.2 refuses it).
    /// </summary>
    Bitmap,
}

/// <summary>What a <c>sync=bitmap</c> mirror does with the user's bitmap at its end (QAPI's BitmapSyncMode).</summary>
public enum BitmapSyncMode
{
    /// <summary>On success the bitmap holds what the job left dirty (nothing, once completed); on failure it is left.</summary>
    OnSuccess,

    /// <summary>Nothing: the bitmap keeps its bits (and whatever it recorded meanwhile).</summary>
    Never,

    /// <summary>Whatever the outcome the bitmap holds what the job left dirty, so a failed re-sync can be run again.</summary>
    Always,
}

/// <summary>What a mirror does with the target's backing file at completion (QEMU's BlockMirrorBackingMode).</summary>
public enum MirrorBackingMode
{
    /// <summary>Nothing: the target's backing is whatever its user set (blockdev-mirror).</summary>
    LeaveBackingChain,

    /// <summary>The target is backed by the source's base (sync top) or by the source (sync none): drive-mirror of a new image.</summary>
    SourceBackingChain,

    /// <summary>The target opens the backing file its header names: drive-mirror onto an existing image.</summary>
    OpenBackingChain,
}

/// <summary>How guest writes reach the target (QMP's MirrorCopyMode, and one mode of ours).</summary>
public enum MirrorCopyMode
{
    /// <summary>Writes dirty the bitmap and the job copies them in the background (QEMU's default).</summary>
    Background,

    /// <summary>
    /// Once the job has copied its initial state, every guest write goes to source and target before it is
    /// acknowledged (QEMU's write-blocking): the target falls no further behind, whatever the write rate.
    /// </summary>
    WriteBlocking,

    /// <summary>
    /// Ours (QMP <c>__org.blockmirror_adaptive</c>, prefixed so that QEMU's clients never meet it by accident):
    /// background or write-blocking as the job's adaptive policy object decides from the measured rates; the
    /// job starts in background mode until that policy switches it.
    /// </summary>
    Adaptive,
}

public static class MirrorNames
{
    public static string ToWireName(this MirrorSyncMode mode) => mode switch
    {
        MirrorSyncMode.Full => "full",
        MirrorSyncMode.Top => "top",
        MirrorSyncMode.None => "none",
        MirrorSyncMode.Bitmap => "bitmap",
        _ => throw new ArgumentOutOfRangeException(nameof(mode)),
    };

    public static string ToWireName(this MirrorCopyMode mode) => mode switch
    {
        MirrorCopyMode.Background => "background",
        MirrorCopyMode.WriteBlocking => "write-blocking",
        MirrorCopyMode.Adaptive => "__org.blockmirror_adaptive",
        _ => throw new ArgumentOutOfRangeException(nameof(mode)),
    };

    public static string ToWireName(this BitmapSyncMode mode) => mode switch
    {
        BitmapSyncMode.OnSuccess => "on-success",
        BitmapSyncMode.Never => "never",
        BitmapSyncMode.Always => "always",
        _ => throw new ArgumentOutOfRangeException(nameof(mode)),
    };

    public static bool TryParseBitmapMode(string text, out BitmapSyncMode mode) => TryParse(text, ToWireName, out mode);

    public static bool TryParseCopyMode(string text, out MirrorCopyMode mode) => TryParse(text, ToWireName, out mode);

    public static bool TryParseSync(string text, out MirrorSyncMode mode) => TryParse(text, ToWireName, out mode);

    /// <summary>The value of <typeparamref name="T"/> whose wire name is <paramref name="text"/>.</summary>
    static bool TryParse<T>(string text, Func<T, string> wireName, out T value) where T : struct, Enum
    {
        foreach (var candidate in Enum.GetValues<T>())
        {
            if (wireName(candidate) == text)
            {
                value = candidate;
                return true;
            }
        }

        value = default;
        return false;
    }
}
