using BlockMirror.Block.Qapi;

namespace BlockMirror.Qmp.Protocol;

/// <summary>
/// qmp_capabilities, which every session answers itself before any other command: its arguments as QEMU
/// declares them (<c>enable</c>, a list of QMPCapability, checked with QEMU's odd "Parameter 'null'" for a
/// value outside it). The one capability, out-of-band execution, is not offered (the greeting lists none),
/// so the session refuses any that is asked for.
/// </summary>
public static class QmpCapabilities
{
    public const string Name = "qmp_capabilities";

    public static QapiObject Arguments { get; } = new("q_obj_qmp_capabilities-arg", ("*enable", new QapiArray(new QapiEnum("QMPCapability", ["oob"]))));
}
