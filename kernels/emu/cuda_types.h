#pragma once
// CUDA's builtin vector types (dim3, uint3, float4, ...) and their make_* constructors, as the
// emulator provides them to kernel source compiled by g++.
//
// Layout and alignment follow CUDA's vector_types.h exactly (float4 and int4 are 16-byte
// aligned, float2 8-byte, the 3-component types have their scalar's alignment), so a kernel
// that reinterprets a float* as a float4* has the same alignment requirements on the CPU as
// on the GPU, and AddressSanitizer/UBSan see the same accesses.

// They live in the global namespace, as in CUDA.

#define BW_EMU_VECTOR1(T, name, align)                                                           \
  struct alignas(align) name { T x; };                                                         \
  inline constexpr name make_##name(T x) { return name{x}; }
#define BW_EMU_VECTOR2(T, name, align)                                                           \
  struct alignas(align) name { T x, y; };                                                      \
  inline constexpr name make_##name(T x, T y) { return name{x, y}; }
#define BW_EMU_VECTOR3(T, name)                                                                  \
  struct name { T x, y, z; };                                                                  \
  inline constexpr name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define BW_EMU_VECTOR4(T, name, align)                                                           \
  struct alignas(align) name { T x, y, z, w; };                                                \
  inline constexpr name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

BW_EMU_VECTOR1(char, char1, 1)
BW_EMU_VECTOR2(char, char2, 2)
BW_EMU_VECTOR3(char, char3)
BW_EMU_VECTOR4(char, char4, 4)
BW_EMU_VECTOR1(unsigned char, uchar1, 1)
BW_EMU_VECTOR2(unsigned char, uchar2, 2)
BW_EMU_VECTOR3(unsigned char, uchar3)
BW_EMU_VECTOR4(unsigned char, uchar4, 4)
BW_EMU_VECTOR1(short, short1, 2)
BW_EMU_VECTOR2(short, short2, 4)
BW_EMU_VECTOR3(short, short3)
BW_EMU_VECTOR4(short, short4, 8)
BW_EMU_VECTOR1(unsigned short, ushort1, 2)
BW_EMU_VECTOR2(unsigned short, ushort2, 4)
BW_EMU_VECTOR3(unsigned short, ushort3)
BW_EMU_VECTOR4(unsigned short, ushort4, 8)
BW_EMU_VECTOR1(int, int1, 4)
BW_EMU_VECTOR2(int, int2, 8)
BW_EMU_VECTOR3(int, int3)
BW_EMU_VECTOR4(int, int4, 16)
BW_EMU_VECTOR1(unsigned int, uint1, 4)
BW_EMU_VECTOR2(unsigned int, uint2, 8)
BW_EMU_VECTOR3(unsigned int, uint3)
BW_EMU_VECTOR4(unsigned int, uint4, 16)
BW_EMU_VECTOR1(long long, longlong1, 8)
BW_EMU_VECTOR2(long long, longlong2, 16)
BW_EMU_VECTOR1(unsigned long long, ulonglong1, 8)
BW_EMU_VECTOR2(unsigned long long, ulonglong2, 16)
BW_EMU_VECTOR1(float, float1, 4)
BW_EMU_VECTOR2(float, float2, 8)
BW_EMU_VECTOR3(float, float3)
BW_EMU_VECTOR4(float, float4, 16)
BW_EMU_VECTOR1(double, double1, 8)
BW_EMU_VECTOR2(double, double2, 16)

#undef BW_EMU_VECTOR1
#undef BW_EMU_VECTOR2
#undef BW_EMU_VECTOR3
#undef BW_EMU_VECTOR4

// dim3: a uint3 whose unspecified components default to 1 (grid and block shapes).
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
