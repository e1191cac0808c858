namespace BlockMirror.Block.Drivers;

/// <summary>Where a driver sits in a stack (QEMU's protocol_name / is_format / is_filter).</summary>
public enum DriverKind
{
    /// <summary>Touches storage itself: file, null-co, memory, nbd.</summary>
    Protocol,

    /// <summary>Interprets the bytes of a <c>file</c> child: raw, qcow2.</summary>
    Format,

    /// <summary>Passes requests on to one filtered child, observing or changing them: blkdebug, mirror-top.</summary>
    Filter,
}
