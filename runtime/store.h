/* store.h: whole tensors read back from the pieces files hold (store.c):
 * a checkpoint folder (docs/checkpoints.md) or a safetensors file. */
#ifndef CARVE_STORE_H
#define CARVE_STORE_H
#include "carve.h"

#define CARVE_CHECKPOINT_FORMAT 1

typedef struct TensorStore {
  const char *dir, *path; /* the checkpoint folder and its manifest; or the safetensors file (both) */
  bool checkpoint;
  /* a checkpoint's: the step it was taken after, and the plan it came from */
  int step, world;
  uint64_t plan, seed;
  Precision precision;
  const char *model;
  int nfiles, *fds; /* a safetensors file stays open; shards are opened as their pieces are read (fds -1) */
  const char **files;
  struct StorePiece *pieces; /* sorted by tensor name */
  int npieces;
} TensorStore;

/* Opens a checkpoint folder (one holding manifest.json) or a safetensors
   file; NULL after a message saying what is wrong with it and where. */
TensorStore *store_open(const char *path, FILE *err);
void store_close(TensorStore *s);
/* Fills dst with the n elements of piece g (see Piece) of tensor `name`,
   whose whole shape must be `whole`: false after a message naming the
   tensor when the store lacks it, has another shape, or cannot give every
   element (a damaged file, pieces that do not cover it). */
bool store_fill(const TensorStore *s, const char *name, const Shape *whole, const Piece *g, int64_t n, float *dst,
                FILE *err);
/* The names and whole shapes of the tensors of one kind (param: the model's
   parameters), in name order; returns their count (names, shapes: NULL to count). */
int store_tensors(const TensorStore *s, BufKind kind, const char **names, Shape *shapes);

#endif
