# mpi.sh: sourced by every script that starts carve's ranks (the tests, the
# benches, setup.sh). OpenMPI refuses to run as root without the first two
# variables; one OpenMP thread per rank keeps ranks from fighting over
# cores; --oversubscribe allows more ranks than cores, and no binding lets
# the ranks share them.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
mpirun="mpirun --oversubscribe --bind-to none"
