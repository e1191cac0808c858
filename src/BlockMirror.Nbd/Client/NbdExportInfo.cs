using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd.Client;

/// <summary>
/// What the handshake learnt about the export the client is bound to: its size and transmission flags,
/// the block sizes the server asked for, and what the two sides agreed on (structured replies, the id of
/// <c>base:allocation</c>).
/// </summary>
/// <param name="Size">Length of the export in bytes.</param>
/// <param name="Flags">NBD_FLAG_* of the export: read-only, which commands it takes, multi-conn.</param>
/// <param name="MinimumBlock">Requests are aligned to this (1 when the server did not say).</param>
/// <param name="PreferredBlock">Requests of this size and alignment cost the server least.</param>
/// <param name="MaximumBlock">No request carries more payload than this.</param>
/// <param name="Structured">Structured replies were agreed: reads may come in chunks, holes as holes.</param>
/// <param name="AllocationContext">The id of <c>base:allocation</c> on this connection, or null when the server has none.</param>
public sealed record NbdExportInfo(
    ulong Size,
    NbdTransmissionFlags Flags,
    uint MinimumBlock,
    uint PreferredBlock,
    uint MaximumBlock,
    bool Structured,
    uint? AllocationContext)
{
    public bool ReadOnly => Has(NbdTransmissionFlags.ReadOnly);

    public bool Has(NbdTransmissionFlags flag) => (Flags & flag) == flag;
}
