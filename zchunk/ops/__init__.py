"""Operations on stacks: projections and filters (lazy, ``Stack -> Stack``)."""
