using BlockMirror.Block.Io;

namespace BlockMirror.Block.Drivers;

/// <summary>
/// A driver whose data for a range lies as it is in a file, so a read can move it into a pipe without a buffer
/// of ours (<see cref="SplicePipe"/>): the file driver, and what passes ranges through to one unchanged (raw).
/// The node asks <see cref="CanSpliceRead"/> and, when false, reads into a buffer and copies it into the pipe.
/// </summary>
public interface ISpliceReadable
{
    /// <summary>Whether [<paramref name="offset"/>, +<paramref name="length"/>) can be spliced (as the request stands, with no padding).</summary>
    bool CanSpliceRead(long offset, int length);

    /// <summary>Puts [<paramref name="offset"/>, +<paramref name="length"/>) in the pipe, which has room for it; bytes past the end of the file go in as zeroes.</summary>
    ValueTask SpliceReadAsync(long offset, int length, SplicePipe pipe, CancellationToken cancellationToken);
}
